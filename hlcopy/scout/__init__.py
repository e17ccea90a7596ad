"""Who is worth following: discovery, tracking, analytics, the leaderboard."""
