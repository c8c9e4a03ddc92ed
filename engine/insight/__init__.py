"""Insight: reports, analytics and text, computed in the database.

- :mod:`engine.insight.reports` — ``report`` metadata frozen against the registry and run as one
  scoped, masked SQL statement (``GET /api/v1/reports/<name>``), exported and scheduled.
- :mod:`engine.insight.analytics` — RFM, churn risk, cross-sell rules, channels and KPIs.
- :mod:`engine.insight.text` — complaint keywords per period (jieba, finance dictionary).
- :mod:`engine.insight.kb` — knowledge-base full-text search (FTS5 / tsvector over jieba tokens).
- :mod:`engine.insight.nps` — NPS survey scores and their trend.

Nothing here imports Flask: the web layer (``engine.web.*_api``) calls these services.
"""
