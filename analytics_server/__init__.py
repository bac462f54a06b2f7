"""The admin query service: answers the maintainers' questions about stored reports."""
