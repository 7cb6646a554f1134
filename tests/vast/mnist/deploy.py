# Vast's "MNIST Training & Inference" example (guides/serverless/deployments/examples/train-mnist),
# the import lines changed and sized for a CPU without the internet: the same shape (a context
# trains a classifier at worker startup, a remote function classifies 28x28 images), with numpy
# in place of torch and digits drawn from a 5x7 font in place of the MNIST download.
from vastrpc import Deployment
from vastrpc.query import RTX_4090, RTX_5090, gpu_name

app = Deployment(name="train-mnist")

FONT = {
    0: ["01110", "10001", "10011", "10101", "11001", "10001", "01110"],
    1: ["00100", "01100", "00100", "00100", "00100", "00100", "01110"],
    2: ["01110", "10001", "00001", "00010", "00100", "01000", "11111"],
    3: ["11110", "00001", "00001", "01110", "00001", "00001", "11110"],
    4: ["00010", "00110", "01010", "10010", "11111", "00010", "00010"],
    5: ["11111", "10000", "11110", "00001", "00001", "10001", "01110"],
    6: ["00110", "01000", "10000", "11110", "10001", "10001", "01110"],
    7: ["11111", "00001", "00010", "00100", "01000", "01000", "01000"],
    8: ["01110", "10001", "10001", "01110", "10001", "10001", "01110"],
    9: ["01110", "10001", "10001", "01111", "00001", "00010", "01100"],
}


def draw(digit, dx=0, dy=0):
    """A 28x28 image of ``digit``: its 5x7 glyph scaled by 3, shifted by (dx, dy) pixels."""
    import numpy as np

    image = np.zeros((28, 28), dtype=np.float32)
    glyph = np.kron(np.array([[int(c) for c in row] for row in FONT[digit]], dtype=np.float32), np.ones((3, 3)))
    top, left = 3 + dy, 6 + dx
    image[top : top + 21, left : left + 15] = glyph
    return image


@app.context()
class MNISTModel:
    async def __aenter__(self):
        import numpy as np

        rng = np.random.default_rng(0)
        images, labels = [], []
        for digit in range(10):
            for dx in range(-2, 3):
                for dy in range(-2, 3):
                    noisy = draw(digit, dx, dy) + rng.normal(0.0, 0.2, (28, 28))
                    images.append(noisy.ravel())
                    labels.append(digit)
        x = (np.array(images, dtype=np.float32) - 0.1307) / 0.3081
        y = np.eye(10, dtype=np.float32)[labels]

        print("Training MNIST classifier...")
        weights = np.zeros((28 * 28, 10), dtype=np.float32)
        for epoch in range(3):
            for _ in range(100):
                logits = x @ weights
                probs = np.exp(logits - logits.max(axis=1, keepdims=True))
                probs /= probs.sum(axis=1, keepdims=True)
                weights -= 0.01 * x.T @ (probs - y) / len(x)
            loss = -np.mean(np.sum(y * np.log(probs + 1e-9), axis=1))
            print(f"  Epoch {epoch + 1}/3  loss={loss:.4f}")

        self.model = weights
        self.device = "cpu"
        print("Training complete. Model ready for inference.")
        return self

    async def __aexit__(self, *exc):
        pass


@app.remote(benchmark_dataset=[{"pixel_values": [[0.0] * 28] * 28}])
async def infer(pixel_values: list[list[float]]) -> dict:
    """Classify a 28x28 grayscale image (0.0 black, 1.0 white): {"digit", "probability"}."""
    import numpy as np

    ctx = app.get_context(MNISTModel)
    tensor = (np.array(pixel_values, dtype=np.float32).ravel() - 0.1307) / 0.3081
    logits = tensor @ ctx.model
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    return {"digit": int(probs.argmax()), "probability": float(probs.max())}


image = app.image("vastai/pytorch:@vastai-automatic-tag", 16)
image.venv("/venv/main")
image.require(gpu_name.in_([RTX_4090, RTX_5090]))
app.configure_autoscaling(min_load=100)
app.ensure_ready()
