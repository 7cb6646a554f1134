# Vast's client for the square example, unchanged.
import asyncio

from deploy import square


async def main():
    for x in range(1, 10):
        result = await square(x)
        print(f"square({x}) = {result}")


if __name__ == "__main__":
    asyncio.run(main())
