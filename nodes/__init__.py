"""The local physics: model declaration, pure step functions, node behaviour."""
