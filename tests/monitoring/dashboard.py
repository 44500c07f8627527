"""The fleet dashboard's panels, for tests/monitoring/run.sh's checks."""


def panels(items):
    """Every panel of `items`, those inside rows too."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))
