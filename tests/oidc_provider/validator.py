from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from oauth2_provider.oauth2_validators import OAuth2Validator


class Validator(OAuth2Validator):
    """Adds the claims SanjAI reads; the groups come from a file the test writes."""

    oidc_claim_scope = None  # every claim in every token, whatever the scope

    def get_additional_claims(self, request: Any) -> dict[str, Any]:
        groups_file = Path(os.environ["PROVIDER_GROUPS_FILE"])
        groups = json.loads(groups_file.read_text()) if groups_file.exists() else []
        user = request.user
        return {"preferred_username": user.username, "email": user.email, "groups": groups}
