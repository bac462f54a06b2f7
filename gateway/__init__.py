"""The REST gateway: the admin dashboard's API and the local privacy page."""
