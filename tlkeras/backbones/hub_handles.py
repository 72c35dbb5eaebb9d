"""Finding a TF Hub / Kaggle Models module: a handle to its URL, a URL or folder to the local folder.

No TensorFlow here: `tensorflow_hub` is imported only to download a module.
"""

from __future__ import annotations

import os
import urllib.error

from tlkeras.errors import BackboneError

KAGGLE_MODELS = "https://www.kaggle.com/models/"
_INSTALL = 'pip install "tlkeras[hub]"'


def handle_url(handle: str) -> str:
    """What tensorflow_hub's resolver gets: URLs and existing paths as they are; a Kaggle
    handle (owner/model/framework/variation/version) as its Kaggle Models URL.

    >>> handle_url("google/mobilenet-v2/tensorFlow2/100-224-feature-vector/2")
    'https://www.kaggle.com/models/google/mobilenet-v2/tensorFlow2/100-224-feature-vector/2'
    >>> handle_url("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5")
    'https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5'
    """
    if "://" in handle or os.path.exists(handle) or os.path.isabs(handle) or handle.startswith("."):
        return handle
    if len(handle.strip("/").split("/")) == 5:
        return KAGGLE_MODELS + handle.strip("/")
    return handle


def resolve_handle(handle: str) -> str:
    """The local folder of a module: downloaded into (or found in) TFHUB_CACHE_DIR, or the folder itself."""
    url = handle_url(handle)
    if "://" not in url:
        if not os.path.isdir(url):
            raise BackboneError(
                f"backbone: hub:{handle} is neither a URL nor an existing folder; use a tfhub.dev / Kaggle Models "
                "URL or handle, or the folder of a SavedModel."
            )
        if not os.path.isfile(os.path.join(url, "saved_model.pb")):
            raise BackboneError(f"backbone: hub:{handle} holds no saved_model.pb; point it at a SavedModel folder.")
        return url
    try:
        import tensorflow_hub as hub
    except ImportError:
        raise BackboneError(
            f"backbone: hub:{handle} needs tensorflow-hub (and tf-keras, which it imports): {_INSTALL}."
        ) from None
    try:
        from tensorflow_hub import resolver

        cache = resolver.tfhub_cache_dir(use_temp=True)  # where hub.resolve looks first (TFHUB_CACHE_DIR)
    except Exception:  # a private module of tensorflow_hub: only for the message
        cache = os.environ.get("TFHUB_CACHE_DIR") or "its default cache"
    try:
        return hub.resolve(url)
    except Exception as e:  # urllib's URLError/HTTPError, tarfile errors, ...
        raise BackboneError(
            f"backbone: could not fetch hub:{handle} ({_why(e)}). Without "
            f"network, put the module where TFHUB_CACHE_DIR points (looked in {cache}; a machine with network "
            "fills it by resolving the same handle with TFHUB_CACHE_DIR set), or download and unpack it and "
            "pass its folder: backbone: hub:/path/to/module."
        ) from None


def _why(error: Exception) -> str:
    """Why tensorflow_hub's resolver failed, as a user can act on it."""
    reason = str(getattr(error, "reason", None) or error).splitlines()[0][:160]
    if isinstance(error, urllib.error.HTTPError):
        return f"the server answered HTTP {error.code} {reason}"
    if isinstance(error, urllib.error.URLError):
        return f"no network? {reason}"
    if "does not appear to be a valid module" in reason:  # the archive did not unpack: cut, or not a module
        return "what came back is not a whole module archive (a cut download?)"
    return f"{type(error).__name__}: {reason}"
