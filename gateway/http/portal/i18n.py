"""Danish first, English second: the portal's words, the statuses as the user guide explains
them, dates and sizes.

Pages are written in Danish; `_("…")` in a template or here looks the Danish text up in
`ENGLISH` when the page is English (a test checks that every text has its translation).
The language is `?lang=` (kept in a cookie), else the user's own, else the configured default.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.model import STATUS_LABELS_DA, STATUS_LABELS_EN, Status

LANGUAGES = ("da", "en")
ZONE = ZoneInfo("Europe/Copenhagen")

Translate = Callable[..., str]
_STATUSES = frozenset(s.value for s in Status)

# The guide's table "Oversigt over statuskoder på sager i Serviceportalen samt deres betydninger".
EXPLANATION_DA = {
    Status.REGISTRERET: "Sagen er modtaget, men behandling er endnu ikke påbegyndt.",
    Status.PAABEGYNDT: "Sagsbehandlingen er påbegyndt.",
    Status.TILDELT: "Sagen er tildelt en specifik medarbejder.",
    Status.AFVENTER_INTERNT: "Sagen er videresendt til viderebehandling internt ved Statens Administration.",
    Status.AFVENTER_REKVIRENT: "Der afventes svar fra opretter af sagen, som har modtaget mail-notifikation om dette.",
    Status.UDFOERT: "Sagen er vurderet som udført, og svar er fremsendt. Sagen kan genåbnes, "
                    "såfremt sagen vurderes til ikke at være løst.",
    Status.LUKKET: "Sagen har stået som udført i {days} dage og lukkes. Herefter kan den ikke genåbnes.",
}
EXPLANATION_EN = {
    Status.REGISTRERET: "The case has been received, but work on it has not started yet.",
    Status.PAABEGYNDT: "Work on the case has started.",
    Status.TILDELT: "The case has been assigned to a specific member of staff.",
    Status.AFVENTER_INTERNT: "The case has been passed on for further work within Statens Administration.",
    Status.AFVENTER_REKVIRENT: "We are waiting for an answer from the person who opened the case, "
                               "who has been told so by e-mail.",
    Status.UDFOERT: "The case is judged to be done, and an answer has been sent. "
                    "The case can be reopened if it turns out not to be solved.",
    Status.LUKKET: "The case has been done for {days} days and is closed. It can no longer be reopened.",
}

ENGLISH: dict[str, str] = {
    # the frame of every page
    "Gå til indhold": "Skip to content",
    "Serviceportalen": "Serviceportalen",
    "Statens Administration": "Statens Administration",
    "Hovedmenu": "Main menu",
    "Forside": "Home",
    "Mine sager": "My cases",
    "Log ind": "Log in",
    "Log ud": "Log out",
    "Logget ind som {name}": "Logged in as {name}",
    "Kundebetjening, Statens Administration": "Kundebetjening (Customer Service), Statens Administration",
    "Skriv til Kundebetjening": "Write to Kundebetjening",
    "Vejledning til Serviceportalen": "Guide to Serviceportalen",
    "Sprog": "Language",
    "Brødkrummer": "Breadcrumbs",
    # the front page
    "Velkommen til Serviceportalen": "Welcome to Serviceportalen",
    "Her kan du følge dine henvendelser til Kundebetjening, opdatere dem og dele dem med kolleger.":
        "Here you can follow your enquiries to Kundebetjening, update them and share them with colleagues.",
    "Se alle dine igangværende sager.": "See all your cases in progress.",
    "Log ind med din e-mailadresse og adgangskode.": "Log in with your e-mail address and password.",
    "Opret bruger": "Register",
    "Første gang vælger du en adgangskode via et link, vi sender til din e-mail.":
        "The first time, you choose a password through a link we send to your e-mail.",
    "Du er logget ud.": "You are logged out.",
    # login, registration, links
    "E-mailadresse": "E-mail address",
    "Adgangskode": "Password",
    "Gentag adgangskode": "Repeat password",
    "Navn": "Name",
    "Log ind med {name}": "Log in with {name}",
    "Log ind med adgangskode": "Log in with your password",
    "Glemt adgangskode?": "Forgot your password?",
    "Ny bruger? Opret dig her": "New user? Register here",
    "Forkert e-mailadresse eller adgangskode.": "Wrong e-mail address or password.",
    "For mange forsøg. Vent 1 minut, og prøv igen.": "Too many attempts. Wait 1 minute and try again.",
    "For mange forsøg. Vent {minutes} minutter, og prøv igen.":
        "Too many attempts. Wait {minutes} minutes and try again.",
    "Skriv en gyldig e-mailadresse.": "Enter a valid e-mail address.",
    "Har du skrevet til Kundebetjening før, er du allerede bruger: så vælger du blot en adgangskode. "
    "Skriv din e-mailadresse, så sender vi dig et link.":
        "If you have written to Kundebetjening before, you are a user already: you only choose a password. "
        "Enter your e-mail address and we will send you a link.",
    "Skriv din e-mailadresse, så sender vi dig et link, hvor du kan vælge en ny adgangskode.":
        "Enter your e-mail address and we will send you a link where you can choose a new password.",
    "Send link": "Send link",
    "Glemt adgangskode": "Forgot your password",
    "Tjek din e-mail": "Check your e-mail",
    "Hvis adressen kan bruges på Serviceportalen, har vi sendt et link til {email}. "
    "Linket virker én gang og udløber om {minutes} minutter.":
        "If the address can be used on Serviceportalen, we have sent a link to {email}. "
        "The link works once and expires in {minutes} minutes.",
    "Kan du ikke finde mailen, så se efter i din uønskede post.": "If you cannot find the e-mail, look in your junk mail.",
    "Vælg adgangskode": "Choose your password",
    "Vælg en adgangskode til {email}.": "Choose a password for {email}.",
    "Mindst {n} tegn.": "At least {n} characters.",
    "Gem adgangskode": "Save password",
    "Adgangskoden skal være på mindst {n} tegn.": "The password must be at least {n} characters long.",
    "Adgangskoden er for lang.": "The password is too long.",
    "De to adgangskoder er ikke ens.": "The two passwords are not the same.",
    "Adgangskoden må ikke være din e-mailadresse.": "The password must not be your e-mail address.",
    "Linket virker ikke": "The link does not work",
    "Linket er brugt, udløbet eller ikke gyldigt.": "The link has been used, has expired or is not valid.",
    "Bestil et nyt link": "Ask for a new link",
    # Mine sager
    "Vis": "Show",
    "Igangværende": "In progress",
    "Afsluttede": "Finished",
    "Alle": "All",
    "Filtrering": "Filter",
    "Sagsnummer": "Case number",
    "Emne": "Subject",
    "Status": "Status",
    "Senest ændret": "Last changed",
    "(uden emne)": "(no subject)",
    "Du har ingen sager her.": "You have no cases here.",
    "{n} sag": "{n} case",
    "{n} sager": "{n} cases",
    "Side {page} af {pages}": "Page {page} of {pages}",
    "Forrige side": "Previous page",
    "Næste side": "Next page",
    "Sider": "Pages",
    # the case
    "Sag {number}": "Case {number}",
    "Oprettet": "Opened",
    "Oprettet af": "Opened by",
    "Delt med": "Shared with",
    "Sagen er ikke delt med andre.": "The case is not shared with anyone.",
    "Handlinger": "Actions",
    "Del": "Share",
    "Luk": "Close",
    "Opdater sagen": "Update the case",
    "Kommentar": "Comment",
    "Vedhæft fil (valgfrit)": "Attach a file (optional)",
    "Højst {size}.": "At most {size}.",
    "Send": "Send",
    "Samtale": "Conversation",
    "Ingen kommentarer endnu.": "No comments yet.",
    "Kundebetjening": "Kundebetjening (Customer Service)",
    "Vedhæftede filer": "Attached files",
    "Historik": "History",
    "Tidspunkt": "Time",
    "Fra": "From",
    "Til": "To",
    "Sagen er lukket. Herefter kan den ikke genåbnes.": "The case is closed. It can no longer be reopened.",
    "Har du et nyt spørgsmål, kan du oprette en ny sag ved at skrive til Kundebetjening.":
        "If you have a new question, you can open a new case by writing to Kundebetjening.",
    "Opret en ny sag": "Open a new case",
    "Din kommentar er sendt, og sagen er opdateret.": "Your comment has been sent and the case is updated.",
    "Sagen er lukket.": "The case is closed.",
    "Sagen er delt.": "The case is shared.",
    "Skriv en kommentar, eller vedhæft en fil.": "Write a comment or attach a file.",
    "Filen er for stor. Højst {size}.": "The file is too large. At most {size}.",
    "Kommentaren er for lang.": "The comment is too long.",
    "Sagen kunne ikke opdateres.": "The case could not be updated.",
    "Fejl": "Error",
    # Luk
    "Luk sagen": "Close the case",
    "Har du fortrudt oprettelsen af sagen, kan du lukke den her. En lukket sag kan ikke genåbnes.":
        "If you regret opening the case, you can close it here. A closed case can never be reopened.",
    "Er du sikker på, at du vil lukke sag {number}?": "Are you sure you want to close case {number}?",
    "Ja, luk sagen": "Yes, close the case",
    "Fortryd": "Cancel",
    # Del
    "Del sagen": "Share the case",
    "Du kan dele sagen med andre brugere i din egen organisation ({organisation}). "
    "De kan se og opdatere sagen og får besked, når status ændres.":
        "You can share the case with other users of your own organisation ({organisation}). "
        "They can see and update the case and are told when its status changes.",
    "Søg efter navn": "Search by name",
    "Søg": "Search",
    "Søgeresultat": "Search results",
    "Ingen brugere fundet.": "No users found.",
    "Tilføj {name}": "Add {name}",
    "Fjern {name}": "Remove {name}",
    "Tilføj": "Add",
    "Fjern": "Remove",
    "Vil blive delt med": "Will be shared with",
    "Ingen valgt endnu.": "No one chosen yet.",
    "Vælg mindst én bruger.": "Choose at least one user.",
    "Sagen kan kun deles med brugere i din egen organisation.":
        "The case can only be shared with users of your own organisation.",
    "Sagen kan ikke deles, fordi den ikke hører til en organisation.":
        "The case cannot be shared, because it belongs to no organisation.",
    "En lukket sag kan ikke deles.": "A closed case cannot be shared.",
    "Annuller": "Cancel",
    "Luk dialogen": "Close the dialogue",
    # errors
    "Siden findes ikke": "Page not found",
    "Siden findes ikke, eller du har ikke adgang til den.": "The page does not exist, or you have no access to it.",
    "Gå til Mine sager": "Go to My cases",
    "Formularen er udløbet": "The form has expired",
    "Formularen kunne ikke sendes. Gå tilbage, genindlæs siden, og prøv igen.":
        "The form could not be sent. Go back, reload the page and try again.",
    "For mange forsøg": "Too many attempts",
    "Tjenesten er midlertidigt utilgængelig": "The service is temporarily unavailable",
    "Prøv igen om lidt.": "Please try again in a little while.",
    "Der opstod en fejl": "An error occurred",
    # single sign-on
    "Log ind med single sign-on mislykkedes": "Logging in with single sign-on failed",
    "Vi kunne ikke bekræfte dit login. Prøv igen, eller log ind med din adgangskode.":
        "We could not confirm your login. Try again, or log in with your password.",
    "Din e-mailadresse er ikke bekræftet hos {name}. Bekræft den dér, eller log ind med din adgangskode.":
        "Your e-mail address is not verified at {name}. Verify it there, or log in with your password.",
    "Du er ikke oprettet på Serviceportalen": "You are not registered on Serviceportalen",
    "Første gang opretter du dig med en adgangskode via et link, vi sender til din e-mail. "
    "Derefter kan du logge ind med {name}.":
        "The first time, you register with a password through a link we send to your e-mail. "
        "After that you can log in with {name}.",
    "Single sign-on er midlertidigt utilgængelig": "Single sign-on is temporarily unavailable",
    "Prøv igen om lidt, eller log ind med din adgangskode.": "Try again in a little while, or log in with your password.",
}

_MONTHS_DA = ("januar", "februar", "marts", "april", "maj", "juni", "juli", "august", "september", "oktober",
              "november", "december")
_MONTHS_EN = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December")


def translator(lang: str) -> Translate:
    """`_(text, **values)`: the text in `lang`, with `{name}` filled in."""
    def _(text: str, **values: object) -> str:
        found = text if lang == "da" else ENGLISH.get(text, text)
        return found.format(**values) if values else found

    return _


def choose(asked: str | None, remembered: str | None, users: str | None, default: str) -> str:
    for lang in (asked, remembered, users, default):
        if lang in LANGUAGES:
            return lang
    return "da"


def status_label(status: str, lang: str) -> str:
    labels = STATUS_LABELS_DA if lang == "da" else STATUS_LABELS_EN
    return labels[Status(status)] if status in _STATUSES else status


def explanation(status: str, lang: str, close_after_days: int) -> str:
    if status not in _STATUSES:
        return ""
    table = EXPLANATION_DA if lang == "da" else EXPLANATION_EN
    return table[Status(status)].format(days=close_after_days)


def when(at: datetime, lang: str) -> str:
    """A time as people here read it, in Danish time: 5. januar 2026 kl. 10.00."""
    local = at.astimezone(ZONE)  # the hour and minute by hand: strftime was half of this, 200 times a case page
    if lang == "da":
        return f"{local.day}. {_MONTHS_DA[local.month - 1]} {local.year} kl. {local.hour:02}.{local.minute:02}"
    return f"{local.day} {_MONTHS_EN[local.month - 1]} {local.year}, {local.hour:02}:{local.minute:02}"


def size(n: int, lang: str) -> str:
    """1,2 MB (Danish decimal comma) or 1.2 MB."""
    units = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3))
    for unit, factor in units:
        if n >= factor:
            text = f"{n / factor:.1f}".rstrip("0").rstrip(".")
            return f"{text.replace('.', ',') if lang == 'da' else text} {unit}"
    return f"{n} bytes" if lang == "en" else f"{n} byte"
