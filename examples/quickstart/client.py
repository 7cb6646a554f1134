"""Calls the quick-start deployment: deploys it on first use, then awaits remote results."""

import asyncio

from deploy import app, square


async def main() -> None:
    result = await app.ensure_ready()
    print(f"ready: tier {result.tier} ({result.description}), {result.ready_workers} worker(s)")
    print("square(5) =", await square(5))
    print("squares 0..9 =", await asyncio.gather(*(square(i) for i in range(10))))
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
