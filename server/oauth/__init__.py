"""The OAuth 2.0 protocol: client authentication, grants, access tokens, refresh-token families, errors."""
