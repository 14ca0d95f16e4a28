"""letskencrypt: a privilege-separated ACME (RFC 8555) client."""

__version__ = "0.1.0"
