"""Authentication to partners: OAuth 2 grants, templated token requests, JWT assertions,
request signing, and the token manager shared by replicas. It talks to Redis and HTTP only
through the protocols it defines (``TokenStore``, ``TokenTransport``)."""
