"""Generated API packages; see protos/ for the contract."""
