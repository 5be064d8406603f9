"""The HTTP wing: the agents' JSON API (`gateway.http.api`) and Serviceportalen's pages
(`gateway.http.portal`), served together by `gateway run` on `[api] host/port`."""
