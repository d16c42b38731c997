"""Log storage backends, one module each, sharing no base class until two need one."""
