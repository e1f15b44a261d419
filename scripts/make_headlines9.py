"""Generate the bundled `headlines9` corpus: seeded, synthetic 9-label news headlines.

Writes quantmatrix/datasets/headlines9.jsonl (+ .sha256) and headlines9_canary.jsonl. The corpus is
deliberately hard: labels share vocabulary (AI, NHS, floods, ministers), some templates are
genuinely ambiguous and belong to two labels, and NOISE_RATE of every split carries a random wrong
label, so a fine-tuned MiniLM lands near macro-F1 0.85-0.93 rather than a useless 1.0.

    python scripts/make_headlines9.py          # rewrite the committed files
    python scripts/make_headlines9.py --check  # exit 1 if the committed files are stale
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

SEED = 20240917
LABELS = ("World", "Sports", "Business", "Sci/Tech", "education", "health", "climate", "security", "tech-policy")
SPLIT_SIZES = {"train": 2200, "validation": 400, "test": 800, "calibration": 200}
NOISE_RATE = 0.05  # share of each split given a random wrong label
AMBIGUOUS_RATE = 0.10  # share of each label's examples drawn from templates shared with another label
MIN_WORDS, MAX_WORDS = 5, 14

OUT_DIR = Path(__file__).resolve().parent.parent / "quantmatrix" / "datasets"

# Hand-picked ambiguous headlines with the label a good classifier should give; the first three come
# from users' lab notebooks. They never appear in the corpus itself.
CANARY: tuple[tuple[str, str], ...] = (
    ("Cybersecurity breach exposes NHS patient records", "security"),
    ("AI tutor program set to roll out in Scottish schools", "education"),
    ("Climate report warns UK cities face extreme flooding by 2030", "climate"),
    ("Ransomware attack shuts school district systems for a week", "security"),
    ("Government proposes licence regime for frontier AI developers", "tech-policy"),
    ("Oil giant profits surge despite pledge to cut emissions", "Business"),
    ("Hospital trial finds new drug halves dementia progression", "health"),
    ("Striker seals late winner to send United into cup final", "Sports"),
    ("Foreign ministers meet in Geneva as ceasefire talks stall", "World"),
    ("Astronomers detect water vapour on distant exoplanet", "Sci/Tech"),
    ("Universities warn tuition fee freeze will force course closures", "education"),
    ("Heatwave pushes hospital admissions to record high across Europe", "health"),
)

# ---------------------------------------------------------------------------------------------
# Slot fillers. Each `{name}` in a template is replaced by an independent draw from POOLS[name].
# Many words to a line, so the formatter is kept off them; their order is part of the seeded corpus.

# fmt: off
COUNTRIES = [
    "France", "Germany", "Japan", "Brazil", "India", "Kenya", "Canada", "Mexico", "Egypt", "Turkey", "Poland",
    "Nigeria", "Indonesia", "Argentina", "South Korea", "Australia", "Spain", "Italy", "Vietnam", "Chile", "Pakistan",
    "Ukraine", "Sweden", "Ghana", "Peru", "Morocco", "Thailand", "Norway", "Ethiopia", "Colombia", "the Philippines",
    "Bangladesh", "Greece", "Ireland", "Portugal",
]
CITIES = [
    "Paris", "Berlin", "Tokyo", "Nairobi", "Lagos", "Mumbai", "Jakarta", "Lima", "Cairo", "Istanbul", "Warsaw", "Seoul",
    "Madrid", "Rome", "Hanoi", "Santiago", "Karachi", "Kyiv", "Stockholm", "Accra", "Bangkok", "Oslo", "Bogota",
    "Toronto", "Sydney", "Manila", "Dhaka", "Geneva", "Brussels", "Athens",
]
UK_PLACES = [
    "Manchester", "Leeds", "Glasgow", "Cardiff", "Bristol", "Birmingham", "Liverpool", "Edinburgh", "Belfast",
    "Newcastle", "Sheffield", "Nottingham", "London", "Hull", "Aberdeen", "Swansea", "Norfolk", "Cornwall", "Yorkshire",
    "Kent",
]
NATIONALITY = [
    "Scottish", "Welsh", "English", "Irish", "French", "German", "Japanese", "Indian", "Kenyan", "Canadian",
    "Australian", "Brazilian", "Nigerian", "Spanish", "Italian", "Dutch", "Polish",
]
FIRST = [
    "Maria", "James", "Aisha", "Tom", "Priya", "Lucas", "Chen", "Fatima", "Oliver", "Sofia", "Kwame", "Hannah", "Diego",
    "Yuki", "Amara", "Liam", "Elena", "Ravi", "Grace", "Mateo", "Nadia", "Ben", "Ines",
]
LAST = [
    "Okafor", "Smith", "Patel", "Müller", "Rossi", "Tanaka", "Silva", "Kowalski", "Haddad", "Nguyen", "Johnson",
    "Mensah", "Garcia", "Andersson", "Khan", "Dubois", "Murphy", "Costa", "Ivanova", "Evans",
]
TECH_COS = [
    "Google", "Microsoft", "Apple", "Meta", "Amazon", "Nvidia", "OpenAI", "Samsung", "Intel", "IBM", "TikTok", "Huawei",
    "Baidu", "Tencent", "Sony", "Arm", "Qualcomm", "Alibaba", "Nexora", "Quantel",
]
BIZ_COS = [
    "Unilever", "Shell", "BP", "Tesco", "Siemens", "Toyota", "Volkswagen", "Barclays", "HSBC", "Nestle", "Boeing",
    "Airbus", "Rio Tinto", "Glencore", "Maersk", "Ryanair", "Vodafone", "Heineken", "Sainsbury's", "Rolls-Royce", "BT",
    "Lloyds", "Aviva", "Diageo", "Ocado", "Burberry", "easyJet",
]
CLUBS = [
    "Arsenal", "Chelsea", "Liverpool", "Celtic", "Rangers", "Leeds United", "Aston Villa", "Everton", "Real Madrid",
    "Barcelona", "Juventus", "Bayern Munich", "Ajax", "Benfica", "Porto", "Napoli", "Newcastle", "Tottenham",
    "Inter Milan", "Wrexham",
]
EVENTS = [
    "Wimbledon", "the Tour de France", "the Ashes", "the Champions League", "the Six Nations", "the World Cup",
    "the Olympics", "the US Open", "the Grand National", "the Ryder Cup", "the Euros", "the Commonwealth Games",
    "the London Marathon",
]
SPORTS = [
    "tennis", "cricket", "rugby", "golf", "cycling", "athletics", "boxing", "swimming", "snooker", "Formula One",
    "hockey", "netball",
]
ATHLETE_ROLE = [
    "striker", "captain", "goalkeeper", "sprinter", "opener", "fly-half", "midfielder", "champion", "teenager",
    "veteran", "coach", "manager",
]
DISEASES = [
    "measles", "cancer", "dementia", "diabetes", "malaria", "flu", "Covid", "tuberculosis", "cholera", "obesity",
    "heart disease", "mpox", "dengue", "long Covid", "asthma", "HIV", "sepsis", "stroke",
]
TREATMENTS = [
    "vaccine", "drug", "screening programme", "gene therapy", "blood test", "antibiotic", "weight-loss jab",
    "cancer drug", "nasal spray", "brain implant",
]
HEALTH_WORKERS = ["nurses", "junior doctors", "GPs", "paramedics", "midwives", "consultants", "pharmacists"]
HAZARDS = [
    "flooding", "heatwaves", "drought", "wildfires", "sea level rise", "storm surges", "crop failures",
    "coastal erosion", "water shortages", "glacier melt",
]
ATTACKS = [
    "ransomware attack", "cyberattack", "data breach", "phishing campaign", "hack", "DDoS attack", "malware outbreak",
    "spyware campaign", "supply-chain attack",
]
TARGETS = [
    "NHS patient records", "council systems", "school district systems", "airport check-in systems",
    "bank customer data", "hospital IT systems", "water utility controls", "payroll provider", "university servers",
    "police database", "retailer payment systems", "exam board files", "pension fund accounts", "energy grid software",
    "student loan records", "GP surgery systems",
]
ATTACKERS = [
    "Russian hackers", "state-backed hackers", "a criminal gang", "North Korean hackers", "ransomware gang",
    "a teenage hacker", "Chinese-linked group", "hacktivists", "insider",
]
SCHOOL_THINGS = [
    "pupils", "teachers", "headteachers", "students", "universities", "primary schools", "nurseries", "colleges",
    "apprentices", "secondary schools",
]
EXAMS = ["GCSE", "A-level", "Highers", "SAT", "baccalaureate", "university entrance", "maths", "reading"]
DEVICES = [
    "smartphone", "foldable phone", "smartwatch", "VR headset", "laptop", "tablet", "games console", "e-reader",
    "drone", "electric scooter", "smart glasses",
]
PHARMA = ["AstraZeneca", "GSK", "Pfizer", "Novartis", "Roche", "Moderna", "Novo Nordisk", "Sanofi", "Bayer"]
GADGETS = [
    "smartphone", "foldable phone", "smartwatch", "VR headset", "laptop", "chip", "AI model", "robot", "battery",
    "games console", "satellite", "search engine", "chatbot",
]
SPACE = ["NASA", "SpaceX", "ESA", "Isro", "Japan's space agency", "Blue Origin", "China's space agency"]
SCIENCE_FINDS = [
    "exoplanet", "black hole", "dinosaur species", "ancient virus", "new particle", "room-temperature superconductor",
    "deep-sea creature", "gravitational waves", "comet",
]
REGULATORS = [
    "Ofcom", "the competition watchdog", "the EU Commission", "the data regulator", "the FTC", "the ICO", "the CMA",
    "Brussels", "US senators", "MPs", "the courts", "regulators",
]
TECH_RULES = [
    "AI Act", "Online Safety Act", "digital services tax", "app store rules", "encryption rules",
    "age verification rules", "facial recognition ban", "right-to-repair law", "chip export controls",
    "data protection law", "algorithm transparency rules", "social media ban for under-16s",
]
MINISTERS = [
    "Prime minister", "Foreign minister", "Education secretary", "Health secretary", "Technology minister",
    "Chancellor", "President", "Home secretary", "Energy minister",
]
WORLD_ORGS = ["the UN", "the EU", "Nato", "the African Union", "G20 leaders", "G7 leaders", "Asean"]
MARKETS = ["FTSE 100", "Dow Jones", "Nikkei", "Dax", "S&P 500", "pound", "euro", "yen", "bitcoin"]
COMMODITIES = ["oil", "gas", "gold", "copper", "wheat", "coffee", "cocoa", "lithium", "steel"]
MOVES = ["surge", "slump", "jump", "slide", "rally", "tumble", "climb", "fall", "soar", "sink"]
RISE = ["rise", "fall", "jump", "drop", "double", "halve", "climb", "ease"]
# fmt: on


def _money(rng: random.Random) -> str:
    unit = rng.choice(["m", "bn"])
    amount = rng.randint(2, 950) if unit == "m" else round(rng.uniform(1.1, 49.0), 1)
    return f"{rng.choice('£$€')}{amount}{unit}"


POOLS: dict[str, Sequence[str] | Callable[[random.Random], str]] = {
    "country": COUNTRIES,
    "city": CITIES,
    "uk": UK_PLACES,
    "nat": NATIONALITY,
    "person": lambda r: f"{r.choice(FIRST)} {r.choice(LAST)}",
    "last": LAST,
    "techco": TECH_COS,
    "bizco": BIZ_COS,
    "pharma": PHARMA,
    "device": DEVICES,
    "club": CLUBS,
    "event": EVENTS,
    "sport": SPORTS,
    "role": ATHLETE_ROLE,
    "disease": DISEASES,
    "treatment": TREATMENTS,
    "workers": HEALTH_WORKERS,
    "hazard": HAZARDS,
    "attack": ATTACKS,
    "target": TARGETS,
    "attacker": ATTACKERS,
    "school": SCHOOL_THINGS,
    "exam": EXAMS,
    "gadget": GADGETS,
    "space": SPACE,
    "find": SCIENCE_FINDS,
    "regulator": REGULATORS,
    "rule": TECH_RULES,
    "minister": MINISTERS,
    "org": WORLD_ORGS,
    "market": MARKETS,
    "commodity": COMMODITIES,
    "move": MOVES,
    "rise": RISE,
    "n": lambda r: str(r.randint(2, 9)),
    "num": lambda r: str(r.randint(10, 990)),
    "k": lambda r: f"{r.randint(2, 95)},000",
    "pct": lambda r: f"{r.randint(2, 45)}%",
    "money": _money,
    "year": lambda r: str(r.randint(2026, 2050)),
    "score": lambda r: f"{r.randint(0, 5)}-{r.randint(0, 4)}",
}

# ---------------------------------------------------------------------------------------------
# Templates per label. The later entries in each list borrow another label's vocabulary on purpose.

TEMPLATES: dict[str, list[str]] = {
    "World": [
        "{org} calls emergency talks as fighting spreads in {country}",
        "Ceasefire collapses in {country} after {num} killed overnight",
        "{country} holds snap election as coalition government falls",
        "Thousands protest in {city} against new security law",
        "{minister} of {country} resigns amid corruption scandal",
        "Peace talks between {country} and {country} resume in {city}",
        "{country} expels {nat} diplomats over spying claims",
        "Refugees stranded at {country} border as crossings close",
        "{org} agrees new sanctions on {country}",
        "Opposition leader {person} arrested in {city}",
        "Military coup attempt foiled in {country}, officials say",
        "{country} and {country} sign historic border agreement",
        "Earthquake kills at least {num} in {country}",
        "{nat} president visits {city} for first time in {n} decades",
        "Voters in {country} reject constitutional reform in referendum",
        "Aid convoy reaches besieged {city} after weeks of talks",
        "{country} recalls ambassador after embassy attack in {city}",
        "Parliament in {country} votes to extend state of emergency",
        "Hostages freed in {country} after {n}-day standoff",
        "{org} summit in {city} ends without joint statement",
        # borrowed vocabulary
        "{country} government collapses over plan to tax carbon emissions",
        "Floods displace {k} people as {country} declares national emergency",
        "{minister} of {country} sacked over schools funding row",
        "{country} accuses {nat} state hackers of election interference",
        "Protesters in {city} demand government act on food prices",
        "{org} warns famine looms in {country} after failed harvests",
    ],
    "Sports": [
        "{club} beat {club} {score} to go top of the league",
        "{person} wins {event} after five-set thriller",
        "{club} sack manager after {n} straight defeats",
        "{nat} {role} {person} retires from international {sport}",
        "{club} complete {money} signing of {nat} {role}",
        "{person} breaks world record in {city}",
        "Late penalty earns {club} dramatic win over {club}",
        "{nat} squad named for {event} with {n} uncapped players",
        "{person} out of {event} with hamstring injury",
        "{club} fans banned from away games after crowd trouble",
        "{nat} cricket team collapse to {n}0 all out",
        "{person} claims first {sport} title in {n} years",
        "Injury-hit {club} held to {score} draw by {club}",
        "{person} suspended for {n} matches after red card",
        "{event} organisers confirm record prize money",
        "{club} {role} {person} signs new {n}-year contract",
        "Underdogs {club} knock holders out of the cup",
        "{person} storms to victory at {event}",
        # borrowed vocabulary
        "{club} owners buy stake in {nat} club for {money}",
        "{club} unveil AI-powered scouting system to find young talent",
        "{nat} {sport} chief resigns after government review",
        "{person} returns to training after heart scare",
        "{club} {role} {person} in hospital after head injury",
        "Data breach exposes {club} season ticket holders' details",
        "Schoolboy {role} {person} makes debut for {club}",
    ],
    "Business": [
        "{bizco} profits {move} as sales beat forecasts",
        "{bizco} to cut {k} jobs in cost-saving drive",
        "{market} hits record high as investors bet on rate cuts",
        "{bizco} agrees {money} takeover of {nat} rival",
        "Inflation in {country} eases to {pct} as fuel prices fall",
        "{commodity} prices {move} after {country} output cut",
        "Central bank of {country} raises interest rates to {pct}",
        "{bizco} shares {move} after profit warning",
        "{bizco} chief executive {person} steps down after {n} years",
        "{bizco} shareholders revolt over boss's {money} pay deal",
        "House prices {rise} by {pct} in {uk}, lender says",
        "{bizco} to close {num} stores as online sales grow",
        "{bizco} plans {money} stock market listing in {city}",
        "Retail sales {rise} unexpectedly as shoppers cut back",
        "{bizco} fined {money} for mis-selling to customers",
        "Unemployment in {country} climbs to {pct}",
        "{bizco} and {bizco} in merger talks",
        "{country} economy shrinks as {commodity} exports {move}",
        # borrowed vocabulary
        "{bizco} shares {move} after {techco} unveils rival AI tool",
        "Insurers face {money} bill after floods in {country}",
        "{bizco} profits {move} despite pledge to cut emissions",
        "{techco} shares {move} as chip demand grows",
        "{bizco} to cut {k} jobs as AI automates back office",
        "{bizco} sales hit by heatwave in {country}",
        "{bizco} boss warns {country} government over tax rises",
        "Drugmaker {pharma} shares {move} after {disease} trial results",
    ],
    "Sci/Tech": [
        "{techco} unveils new {device} with longer battery life",
        "{space} launches mission to study {find}",
        "Scientists discover {find} near distant star",
        "{techco} releases AI model that writes computer code",
        "Researchers build quantum computer with {num} qubits",
        "{space} rocket explodes shortly after launch",
        "Astronomers spot {find} using James Webb telescope",
        "New {device} from {techco} goes on sale in {city}",
        "Physicists in {city} report breakthrough in fusion energy",
        "{techco} says its new chip is {n} times faster",
        "Engineers create robot that can fold laundry",
        "{space} astronauts return after {num} days in orbit",
        "Study finds AI can predict weather days ahead",
        "Fossil of {find} unearthed in {country}",
        "{techco} demonstrates {gadget} controlled by thought",
        "Software update bricks thousands of {techco} devices",
        "Mars rover finds signs of ancient lake",
        "Review: {techco}'s latest {gadget} is fast but pricey",
        # borrowed vocabulary
        "AI system spots {disease} in scans earlier than doctors",
        "Satellite data reveals {hazard} worse than models predicted",
        "{techco} patches flaw that let hackers read messages",
        "University lab builds AI that marks essays in seconds",
        "Engineers design battery that could cut car emissions by {pct}",
        "{techco} AI model passes medical licensing exam",
        "Scientists use AI to design new antibiotic against superbugs",
    ],
    "education": [
        "{school} in {uk} face {pct} funding cut",
        "{exam} results: top grades {rise} in {uk}",
        "Teachers in {uk} vote to strike over pay",
        "Universities warn of course closures as fees frozen",
        "{nat} government scraps {exam} exams for younger pupils",
        "One in {n} {school} report shortage of maths teachers",
        "Free school meals extended to {k} more children",
        "Ofsted rates {num} schools inadequate after inspections",
        "Student loan repayments to {rise} from next year",
        "{nat} universities recruit fewer international students",
        "Nurseries in {uk} close as staff shortages bite",
        "Reading age of {school} falls after pandemic",
        "Apprenticeship starts {rise} by {pct} in {uk}",
        "Headteacher {person} warns of crumbling classrooms",
        "Parents in {uk} protest over school closures",
        "University of {uk} cuts {num} staff amid deficit",
        "{exam} exam paper leaked online days before test",
        "Phonics scheme boosts literacy in {uk} primary schools",
        # borrowed vocabulary
        "AI tutors to be trialled in {num} {nat} schools",
        "Education secretary bans mobile phones in classrooms",
        "{nat} government pledges {money} for school mental health support",
        "Schools in {uk} close early as heatwave hits classrooms",
        "Universities told to teach students about AI cheating",
        "Pupils to learn coding and AI from age {n}",
        "Students protest over university climate investments",
        "Teachers get training to spot online radicalisation",
    ],
    "health": [
        "{disease} cases {rise} sharply in {country}",
        "NHS waiting list in {uk} reaches {k}",
        "New {treatment} approved for {disease} patients",
        "{workers} in {uk} vote to strike over pay",
        "Hospital in {uk} declares critical incident",
        "Trial shows {treatment} cuts {disease} deaths by {pct}",
        "WHO declares {disease} outbreak in {country} an emergency",
        "A&E waits in {uk} hit worst level on record",
        "Doctors warn of {disease} surge this winter",
        "{treatment} to be offered to {k} patients on NHS",
        "Shortage of {workers} leaves wards understaffed",
        "Study links ultra-processed food to {disease}",
        "Health secretary promises {money} to cut waiting times",
        "Cancer survival rates {rise} in {uk}",
        "{num} patients harmed by maternity failings, review finds",
        "Dentists in {uk} stop taking NHS patients",
        "Mental health referrals for children {rise} by {pct}",
        "{disease} vaccine uptake falls in {uk}",
        # borrowed vocabulary
        "AI tool helps NHS doctors detect {disease} earlier",
        "Heatwave deaths {rise} among elderly, health officials say",
        "Air pollution linked to {disease} in {uk} children",
        "Hospital IT outage in {uk} delays {num} operations",
        "{pharma} {treatment} wins approval for {disease}",
        "School nurses warn of {disease} among {school}",
        "Health apps share patient data with advertisers, study finds",
    ],
    "climate": [
        "{country} pledges to reach net zero by {year}",
        "Global temperatures break records for {n} months running",
        "Climate report warns of {hazard} across {country}",
        "Arctic sea ice shrinks to lowest on record, {nat} researchers say",
        "COP talks in {city} end without deal on fossil fuels",
        "{country} to phase out coal power by {year}",
        "Wildfires rage across {country} amid record heat",
        "Coral reefs face mass bleaching as oceans warm",
        "{uk} braces for {hazard} as climate warms",
        "Scientists warn {hazard} will worsen by {year}",
        "Heat pumps to replace gas boilers in {k} homes",
        "Methane leaks far larger than reported, satellites show",
        "{city} unveils plan to adapt to rising seas",
        "Climate activists block roads in {city}",
        "Glaciers in {country} lose {pct} of ice in a decade",
        "Carbon emissions from {country} {rise} for first time in years",
        "Drought dries up rivers across {country}",
        "Rich nations miss climate finance goal for poorer countries",
        # borrowed vocabulary
        "{bizco} accused of greenwashing over emissions targets",
        "Climate change could cost {country} economy {money}",
        "Oil firms to pay {money} into global climate fund",
        "Flooding forces evacuation of {k} homes in {country}",
        "Heatwave to bring temperatures of up to 4{n}C to {city}",
        "{club} fined over carbon emissions from short flights",
        "AI data centres drive surge in carbon emissions",
        "{minister} of {country} defends scrapping green levies",
    ],
    "security": [
        "{attack} hits {target}",
        "{attacker} blamed for {attack} on {target}",
        "{attack} exposes {target} in {uk}",
        "Police arrest {n} over {attack} on {target}",
        "{techco} warns of critical flaw exploited by {attacker}",
        "{attacker} leak stolen {target} online",
        "Cyber agency warns {attacker} targeting {target}",
        "{attack} disrupts {target} for {n} days",
        "Millions of passwords stolen in {techco} {attack}",
        "{bizco} pays {money} ransom after {attack}",
        "Spyware found on phones of {nat} journalists",
        "{attacker} claim {attack} on {target}",
        "Botnet of {k} hacked cameras taken down by police",
        "Fake {techco} emails used in {attack} against {target}",
        "{attack} forces {target} offline in {country}",
        "Hackers demand {money} after stealing {target}",
        "Zero-day bug in {techco} software actively exploited",
        "{attack} on {bizco} exposes customer data",
        # borrowed vocabulary
        "Ransomware attack forces {uk} hospital to cancel operations",
        "{attack} leaves schools in {uk} unable to take registers",
        "Hackers use AI voice clones to trick bank staff",
        "{country} blames {nat} state hackers for election website outage",
        "{attack} on university exposes students' exam results",
        "Government emails hacked in {attack}, minister admits",
        "{attack} on {bizco} knocks {num} stores offline",
    ],
    "tech-policy": [
        "{regulator} fines {techco} {money} over data breach rules",
        "EU passes {rule} after marathon talks",
        "{techco} faces antitrust probe from {regulator}",
        "{country} to introduce {rule} next year",
        "{regulator} orders {techco} to open up app store",
        "{techco} challenges {rule} in court",
        "{techco} told to hand over algorithm details to {regulator}",
        "{country} bans {techco} app on government phones",
        "{regulator} opens inquiry into {techco} search dominance",
        "Lawmakers in {country} vote for {rule}",
        "{techco} agrees to change ad tracking after {regulator} probe",
        "{regulator} blocks {techco} takeover of {techco}",
        "{rule} delayed after lobbying by {techco}",
        "Privacy campaigners sue {techco} over facial recognition",
        "{country} and {country} agree joint rules on AI safety",
        "{techco} fined {money} for breaching {rule}",
        "US tightens chip export controls on {country}",
        "{techco} pledges to comply with {rule}",
        # borrowed vocabulary
        "Government proposes licence scheme for powerful AI models",
        "Minister says AI firms must label deepfakes before elections",
        "{regulator} warns {techco} over children's data in schools",
        "{techco} shares {move} after {regulator} ruling",
        "{country} plans law forcing firms to report cyberattacks",
        "Health data deal with {techco} faces legal challenge",
        "{regulator} fines {techco} over {attack} disclosure failures",
        "Tech giants must count emissions of AI data centres under {rule}",
    ],
}

# Templates that genuinely belong to two labels: drawn with AMBIGUOUS_RATE for either label.
AMBIGUOUS: list[tuple[str, tuple[str, str]]] = [
    ("{club} fined over carbon emissions from away travel", ("Sports", "climate")),
    ("Heatwave forces {event} organisers to change schedule", ("Sports", "climate")),
    ("{club} hit by {attack} ahead of {event}", ("Sports", "security")),
    ("{techco} shares {move} after {country} bans AI chatbot", ("Business", "tech-policy")),
    ("Flood damage costs insurers {money} in {country}", ("Business", "climate")),
    ("{bizco} to invest {money} in wind farms off {uk}", ("Business", "climate")),
    ("{attack} on {uk} hospital trust delays cancer treatment", ("health", "security")),
    ("NHS patient data breach blamed on {techco} contractor", ("health", "security")),
    ("Doctors warn heatwave deaths could double by {year}", ("health", "climate")),
    ("{nat} government to fund AI tutors in every school", ("education", "tech-policy")),
    ("{nat} parliament votes to ban smartphones in classrooms", ("education", "tech-policy")),
    ("University researchers build {num}-qubit quantum processor", ("Sci/Tech", "education")),
    ("Students hit by data breach at University of {uk}", ("education", "security")),
    ("New AI model spots {disease} earlier than radiologists", ("Sci/Tech", "health")),
    ("{country} imposes sanctions over state-backed cyberattacks", ("World", "security")),
    ("Election in {country} dominated by climate and cost of living", ("World", "climate")),
    ("{minister} of {country} pledges {money} for flood defences", ("World", "climate")),
    ("{techco} launches {gadget} after {regulator} approval", ("Sci/Tech", "tech-policy")),
    ("{country} summit agrees global rules on military AI", ("World", "tech-policy")),
    ("{bizco} to cut {k} jobs as AI replaces call centres", ("Business", "Sci/Tech")),
    ("Schools in {uk} shut as {disease} outbreak spreads", ("education", "health")),
    ("{uk} council hit by {attack} after flood warning system fails", ("security", "climate")),
]

_SLOT = re.compile(r"\{(\w+)\}")


def fill(template: str, rng: random.Random) -> str:
    """Replace every `{slot}` with an independent draw and sentence-case the first letter."""

    def draw(match: re.Match[str]) -> str:
        pool = POOLS[match.group(1)]
        return pool(rng) if callable(pool) else rng.choice(pool)

    text = _SLOT.sub(draw, template)
    return text[0].upper() + text[1:]


def _headline(label: str, rng: random.Random) -> str:
    shared = [t for t, pair in AMBIGUOUS if label in pair]
    if shared and rng.random() < AMBIGUOUS_RATE:
        return fill(rng.choice(shared), rng)
    return fill(rng.choice(TEMPLATES[label]), rng)


def generate(seed: int = SEED) -> list[dict[str, str]]:
    """All rows, split by split, each {"text", "label", "split"}; texts unique across splits."""
    rng = random.Random(seed)
    seen = {text.casefold() for text, _ in CANARY}
    rows: list[dict[str, str]] = []
    for split, size in SPLIT_SIZES.items():
        labels = [LABELS[i % len(LABELS)] for i in range(size)]
        rng.shuffle(labels)
        split_rows = []
        for label in labels:
            for _ in range(1000):
                text = _headline(label, rng)
                if MIN_WORDS <= len(text.split()) <= MAX_WORDS and text.casefold() not in seen:
                    break
            else:
                raise RuntimeError(f"cannot draw a new unique {label!r} headline; add templates or fillers")
            seen.add(text.casefold())
            split_rows.append({"text": text, "label": label, "split": split})
        for i in rng.sample(range(size), round(NOISE_RATE * size)):
            true = split_rows[i]["label"]
            split_rows[i]["label"] = rng.choice([lab for lab in LABELS if lab != true])
        rows.extend(split_rows)
    return rows


def to_jsonl(rows: Sequence[dict[str, str]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def outputs(seed: int = SEED) -> dict[str, str]:
    """File name -> exact text of every file this script writes."""
    corpus = to_jsonl(generate(seed))
    canary = to_jsonl([{"text": text, "label": label} for text, label in CANARY])
    digest = hashlib.sha256(corpus.encode("utf-8")).hexdigest()
    return {
        "headlines9.jsonl": corpus,
        "headlines9.sha256": f"{digest}  headlines9.jsonl\n",
        "headlines9_canary.jsonl": canary,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed files differ")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, text in outputs().items():
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("utf-8"))
            print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python scripts/make_headlines9.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
