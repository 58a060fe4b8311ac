"""``logger=wandb`` without a W&B account: log offline instead of failing.

``configs/logger/wandb.yaml`` sets ``offline: ${mmf_wandb_offline:}``; the resolver returns True (with a one-line
notice, once per process) when no credentials are found, so that ``wandb.init`` does not ask for a login (a
40-line traceback without a terminal). An explicit ``WANDB_MODE`` or ``logger.wandb.offline=...`` always wins.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger("mmfusion")
_NOTICE = {"shown": False}


def wandb_host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"


def has_credentials() -> bool:
    """An API key in the environment, an identity token file, a ``.netrc`` entry for the W&B host, or an
    ``api_key`` in the W&B settings file (the places ``wandb.login`` reads)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = wandb_host()
    home = Path(os.path.expanduser("~"))
    for path in filter(None, (os.environ.get("NETRC"), home / ".netrc", home / "_netrc")):
        p = Path(path)
        if p.is_file():
            try:
                if netrc.netrc(str(p)).authenticators(host):
                    return True
            except (netrc.NetrcParseError, OSError):
                if host in p.read_text(errors="ignore"):
                    return True
    cfg_dir = Path(os.environ.get("WANDB_CONFIG_DIR", home / ".config" / "wandb"))
    settings = cfg_dir / "settings"
    return settings.is_file() and "api_key" in settings.read_text(errors="ignore")


def offline_unless_logged_in() -> bool:
    """The value of ``logger.wandb.offline``: True (plus a notice) when there is no W&B login and no
    ``WANDB_MODE``; False otherwise."""
    if os.environ.get("WANDB_MODE") or has_credentials():
        return False
    if not _NOTICE["shown"]:
        _NOTICE["shown"] = True
        log.warning(
            "W&B: no login found (WANDB_API_KEY, ~/.netrc): logging offline under <run folder>/wandb; "
            "upload later with `python scripts/wandb_sync.py <run folder>` after `wandb login`"
        )
    return True
