"""letskencrypt: a privilege-separated ACME (RFC 8555) client."""
