# A client in the style of Vast's examples: import the deployment file (which deploys it), then call.
import asyncio
import json

from deploy import entered, generate, reverse


async def main():
    print(await generate("Hello"))
    print(await reverse("one two three"))
    print("entered", json.dumps(await entered()))


asyncio.run(main())
