"""Client side: the control service client, worker connections, and the router that balances calls."""
