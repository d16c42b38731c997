"""tallystick.verifier: the offline core. (Module map and example are filled in below.)"""

__version__ = "0.1.0"
