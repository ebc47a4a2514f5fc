"""The Copyleaks account shared by every task and worker of a deployment: its token and request budget."""
