# Vast's MNIST client, with the test image drawn instead of downloaded.
import asyncio
import random

from deploy import draw, infer


async def main():
    true_label = random.randint(0, 9)
    pixel_values = draw(true_label, random.randint(-1, 1), random.randint(-1, 1)).tolist()

    result = await infer(pixel_values)
    print(f"True label:  {true_label}")
    print(f"Predicted:   {result['digit']}")
    print(f"Confidence:  {result['probability']:.4f}")


if __name__ == "__main__":
    asyncio.run(main())
