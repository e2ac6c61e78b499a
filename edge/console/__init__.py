"""Console: the control room's web application (``edge console``).

FastAPI on uvicorn, Jinja2 pages, live updates over Server-Sent Events and a little plain
JavaScript. The parts are separate modules with one direction of use:

- :mod:`~edge.console.tables` / :mod:`~edge.console.store`: SQLAlchemy Core over SQLite
  (WAL) or PostgreSQL, schema by Alembic (:mod:`~edge.console.migrate`); the Store hands its
  engine to its parts (``store.auth``, ``store.fleet``, ``store.images``, ``store.audit``:
  ``store_auth``, ``store_fleet``, ``store_images``, ``store_chains``), which share only
  :mod:`~edge.console.db`;
- :mod:`~edge.console.messages`: every device message is untrusted; bounded, validated;
- :mod:`~edge.console.chain`: each device's audit chain verified on arrival;
- :mod:`~edge.console.ingest`: the MQTT 5 client (mutual TLS, persistent session, each
  instance its own subscription to the whole fleet) that feeds the store and the event
  hub, and sends adjudications; :mod:`~edge.console.mqtt_session`: a lost session is an
  alarm;
- :mod:`~edge.console.service`: what a route may ask for (adjudicate, purge, ...);
- :mod:`~edge.console.auth` / :mod:`~edge.console.login`: users, argon2 passwords,
  sessions, CSRF; the login (attempts recorded before the check, checks bounded);
- :mod:`~edge.console.limits`: request bodies, forms and JSON bounded before parsing;
- :mod:`~edge.console.crypto`: images at rest under random data keys destroyed with
  their last row;
- :mod:`~edge.console.app`: the application shell (context, login and role dependencies,
  headers); :mod:`~edge.console.routes_pages` / :mod:`~edge.console.routes_api`: the pages
  and the API. A route never talks to MQTT directly; it calls the service. No two modules
  import each other, even inside a function (``tests/test_layout.py``).

May import: the core, :mod:`edge.delivery` (the alert format and MQTT helpers) and
:mod:`edge.watchlist` (audit chain format, keys, adjudication signing, reference files).
Nothing imports the console but :mod:`edge.commands`.
"""
