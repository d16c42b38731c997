"""The Tallystick Python SDK: the sidecar client, delegation context and LLM-client wrappers.

Not built yet; this package reserves the ``tallystick.sdk`` namespace.
"""
