# SPDX-License-Identifier: Apache-2.0
# memtrail's Python demo: a toy request handler that remembers every session and never evicts
# one, among scratch buffers it drops. Runs until killed. See README "Python".
import time


class Session:
    def __init__(self, request_id, blob):
        self.request_id = request_id
        self.blob = blob


class SessionCache:
    def __init__(self):
        self.sessions = {}

    def remember(self, request_id, payload):
        session = Session(request_id, payload.encode() * 4)  # never evicted: the leak
        self.sessions[request_id] = session


def render(payload):
    return payload.encode() * 8  # scratch: dropped by the caller


def handle(cache, request_id):
    payload = f"user-{request_id}:" + "x" * 300
    body = render(payload)
    cache.remember(request_id, payload)
    return len(body)


def main():
    cache = SessionCache()
    request_id = 0
    while True:
        for _ in range(50):
            handle(cache, request_id)
            request_id += 1
        time.sleep(0.1)


if __name__ == "__main__":
    main()
