"""DKT — Distributed Knowledge Transfer for Distributed Continual Learning."""

__version__ = "0.1.0"
