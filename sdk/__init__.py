"""The Tallystick Python SDK: the sidecar client, delegation context and LLM-client wrappers."""
