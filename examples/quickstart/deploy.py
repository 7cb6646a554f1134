"""The quick-start deployment: one context, one remote function."""

from vastrpc import Deployment, get_context

app = Deployment(name="quickstart", ttl=3600)
app.image("python:3.11-slim").env(MODE="fast")
app.configure_autoscaling(min_workers=1, max_workers=2)


@app.context
class Squares:
    """A lookup table every worker builds once, before it serves."""

    async def __aenter__(self):
        self.table = {i: i * i for i in range(1000)}
        return self

    async def __aexit__(self, *exc):
        pass


@app.remote(benchmark_dataset=[{"x": 2}, {"x": 7}])
async def square(x: int) -> int:
    return get_context(Squares).table[x]
