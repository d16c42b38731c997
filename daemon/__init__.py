"""tallystickd, the gRPC sidecar: services, storage, signing and audit scheduling.

Not built yet; this package reserves the ``tallystick.daemon`` namespace.
"""
