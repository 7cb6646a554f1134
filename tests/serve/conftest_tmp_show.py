import pytest
@pytest.fixture(autouse=True)
def _show(request):
    yield
    cs = request.node.funcargs.get("control_service")
    if cs: print(cs.log_text()[-6000:])
