"""Authentication to partners: OAuth 2 grants, templated token requests, JWT assertions,
request signing, and the token manager shared by replicas. It keeps tokens in Redis through
``iris.store.tokens`` and sends token requests through the ``Exchange`` protocol it defines
(``auth/exchange.py``, implemented by ``iris.http.token_endpoint``): it imports no HTTP client."""
