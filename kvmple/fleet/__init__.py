"""Many hosts: an inventory of bare-metal hosts reached over SSH, and a fan-out that runs a
campaign on each (on its own hardware), all writing to one shared results store."""
