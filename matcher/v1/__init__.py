"""Generated protobuf and gRPC code for package matcher.v1 (do not edit; run `make protos`)."""
