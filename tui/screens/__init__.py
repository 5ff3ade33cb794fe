"""The dashboard's screens: live, replay and attach share one layout (DashboardScreen)."""
