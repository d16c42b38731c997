"""Generated gRPC code for proto/tallystick/v1 (grpcio-tools 1.85.1).

Do not edit: run `make proto` (scripts/gen_proto.sh). CI fails when this is stale.
"""
