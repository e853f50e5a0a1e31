"""Screens of the chat UI."""
