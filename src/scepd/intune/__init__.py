"""Microsoft Intune as the registration point ([challenge] mode = "intune"): scepd acts as
Intune's third-party SCEP CA. Intune makes each device's challenge; scepd gets tokens from
Entra ID, finds Intune's services through Microsoft Graph and asks Intune to validate every
request, with the names and headers of Microsoft's published client library
(microsoft/Intune-Resource-Access, src/CsrValidation).
- tokens: OAuth2 client credentials (a secret or a signed client assertion), cached per process
- discovery: the service endpoints Graph lists for Intune's application, cached
- validator: IntuneValidator, a ChallengeValidator that asks validateRequest
- notifier: IntuneNotifier, successNotification before delivery and failureNotification
- actions: IntuneConnection, what they share to call Intune's services (tokens, discovery,
  the caller's name, the time limit; the headers and the rediscovery of each call)
- revocation: IntuneRevocations, the loop that carries out Intune's revocation requests
May import: scepd.protocol (the error vocabulary), scepd.store (the unit of work),
scepd.challenge (its base interface only), scepd.peerjson, scepd.clock, scepd.metrics (each call to
Microsoft timed), httpx, joserfc.
"""

from scepd.intune.actions import IntuneConnection
from scepd.intune.discovery import Discovery
from scepd.intune.notifier import IntuneNotifier
from scepd.intune.tokens import TokenSource
from scepd.intune.validator import IntuneValidator

__all__ = ["Discovery", "IntuneConnection", "IntuneNotifier", "IntuneValidator", "TokenSource"]
