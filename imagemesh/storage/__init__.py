"""Object storage for outputs and large inputs: one small interface (`ObjectStore`, see
`base`), two backends, chosen by one setting:

    ""  or a path          DirectoryStore, the embedded default (`~/.local/share/imagemesh/outputs`)
    s3://bucket[/prefix]    S3Store; endpoint, region and credentials from their own settings
    none                    no store: outputs travel inline in results, capped (benchmarks,
                            tiny deployments); anything larger fails OUTPUT_TOO_LARGE

Keys are laid out in `keys`. Only the gateway holds a store: workers write through presigned
URLs (S3) or the gateway's WorkerObjects service (directory), see `imagemesh.uploads`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from .base import ObjectNotFound, ObjectStore, ObjectTooLarge, StorageError, StoredObject
from .directory import DirectoryStore

DEFAULT_DIRECTORY = "~/.local/share/imagemesh/outputs"


@dataclass(frozen=True)
class StorageConfig:
    url: str = ""
    endpoint: str = ""
    public_endpoint: str = ""
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""


def open_store(config: StorageConfig) -> ObjectStore | None:
    """The store the settings name, or None for `none`. Raises StorageError, ValueError."""
    url = config.url.strip()
    if url.lower() == "none":
        return None
    if url.startswith("s3://"):
        from .s3 import S3Store  # obstore only where S3 is used

        parts = urlsplit(url)
        if not parts.netloc:
            raise ValueError("storage URL s3://BUCKET[/PREFIX]: the bucket is missing")
        return S3Store(parts.netloc, prefix=parts.path.strip("/"), endpoint=config.endpoint,
                       public_endpoint=config.public_endpoint, region=config.region,
                       access_key_id=config.access_key_id, secret_access_key=config.secret_access_key)
    if "://" in url and not url.startswith("file://"):
        raise ValueError(f"storage URL scheme {url.split('://')[0]!r}: use a directory, file://, s3:// or none")
    return DirectoryStore(url.removeprefix("file://") or DEFAULT_DIRECTORY)


__all__ = ["ObjectStore", "ObjectNotFound", "ObjectTooLarge", "StorageError", "StoredObject",
           "DirectoryStore", "StorageConfig", "open_store", "DEFAULT_DIRECTORY"]
