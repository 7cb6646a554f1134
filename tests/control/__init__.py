"""Tests of the control service: store, blobs, provider, and the service over real gRPC."""
