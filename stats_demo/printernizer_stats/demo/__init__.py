"""The main job: start what exists of the system on embedded defaults and show it working."""
