"""What `config` and the folders share that belongs to none of them, so no arrow runs back up.

The methods, their grid axes, the protocol's values and their report order are declared with each method
in the registry `sea.methods`; here are the orchestration's own shared constants.
"""

from __future__ import annotations

# the dtypes features are stored in (`extract.dtype`); the backbone's compute is a separate key field
STORE_DTYPES: tuple[str, ...] = ("float32", "float16")
