import os

# Playwright's sync API keeps an event loop running on the main thread, and
# Django refuses ORM calls from a thread with a running loop. The tests' own
# ORM calls are plain synchronous code, so this is safe here.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
