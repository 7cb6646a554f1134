"""An example unit test of the quick-start deployment, in-process (run by the suite: tests/test_testing.py)."""

from deploy import app, square

from vastrpc.testing import serve_locally


async def test_square_uses_the_context_table() -> None:
    async with serve_locally(app):
        assert await square(5) == 25
        assert await square.map(range(4)) == [0, 1, 4, 9]
