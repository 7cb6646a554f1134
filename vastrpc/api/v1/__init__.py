"""Generated protobuf and gRPC stubs for vastrpc.api.v1 (do not edit; run scripts/gen_protos.py)."""
