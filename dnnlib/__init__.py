"""dnnlib: small utilities (EasyDict, Logger, atomic files, constructing degan classes by name)."""
from .util import EasyDict, UserError, make_cache_dir_path  # noqa: F401
