"""A local stand-in for Meta's Conversions API that validates and records what hub sends."""

from hub.sandbox.app import create_sandbox_app, sandbox_recorder

__all__ = ["create_sandbox_app", "sandbox_recorder"]
