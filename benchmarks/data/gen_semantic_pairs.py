"""Generate ``semantic_pairs_gen.jsonl``: paraphrase families and controlled-edit hard negatives.

    .venv/bin/python benchmarks/data/gen_semantic_pairs.py [--seed 7] [--out benchmarks/data/semantic_pairs_gen.jsonl]

Every pair is written by the templates below (no copied dataset). A *family* is one
paraphrase pattern (wh-reformulation, imperative ↔ question, synonym swap, short ↔
verbose, CLI question, …) with slot values; positives pair two of its templates with
the same slot values, in one of several writing styles. Hard negatives are controlled
edits of a positive: a slot refilled with another value (entity, number, unit, time,
topic), a negative template (negation, quantifier, modality, comparison, roles), a
different task or an added answer-shape constraint.

Fields: ``family``, ``edit`` (``none`` for positives), ``category`` (``paraphrase`` or
the edit type), ``label``, ``style``, ``split``. The split holds out whole families and
whole edit types: a pair is ``test`` when its family is in :data:`TEST_FAMILIES` or its
edit in :data:`TEST_EDITS`, else ``train``. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# Held out: families and edit types no decision rule or weight was tuned on.
TEST_FAMILIES = frozenset({"acronym", "population", "recipe", "inventor", "symptoms", "http_status",
                           "idiom", "list_members", "when_event", "git_cli", "best_for", "percent"})
TEST_EDITS = frozenset({"time", "quantifier", "comparison"})

# ---------------------------------------------------------------------------- slot values
BOOKS = [("Pride and Prejudice",), ("1984",), ("Hamlet",), ("Moby-Dick",), ("The Great Gatsby",), ("War and Peace",),
         ("Don Quixote",), ("Dracula",), ("Frankenstein",), ("The Hobbit",), ("Jane Eyre",), ("Middlemarch",),
         ("Les Misérables",), ("The Odyssey",), ("Brave New World",), ("Wuthering Heights",)]
ACRONYMS = [(a,) for a in ["HTTP", "NASA", "DNA", "CPU", "GPU", "SQL", "JSON", "URL", "HTML", "RAM", "PDF", "LED", "ATM", "GDP", "VPN", "API", "SCUBA", "UNESCO", "CEO", "DSLR"]]
CITIES = [(c,) for c in ["Tokyo", "Paris", "Lagos", "Cairo", "Lima", "Oslo", "Mumbai", "Toronto", "Sydney", "Berlin",
                         "Madrid", "Seoul", "Nairobi", "Istanbul", "Chicago", "Jakarta", "Osaka", "Lisbon", "Dublin", "Hanoi"]]
COUNTRIES = [(c,) for c in ["France", "Japan", "Brazil", "Kenya", "Canada", "Egypt", "Peru", "Norway", "India", "Mexico",
                            "Vietnam", "Chile", "Poland", "Australia", "Ghana", "Thailand", "Argentina", "Sweden"]]
FOODS = [(f,) for f in ["pancakes", "waffles", "lasagna", "guacamole", "banana bread", "risotto", "hummus", "pad thai",
                        "an omelette", "sourdough bread", "chili", "brownies", "meatballs", "pesto", "fried rice",
                        "apple pie", "french toast", "tomato soup"]]
TOOLS = [("vim", "exit", "quit"), ("emacs", "exit", "quit"), ("nano", "save a file", "write a file"),
         ("tmux", "detach from a session", "leave a session running in the background"),
         ("less", "search for a word", "find a word"), ("screen", "detach", "disconnect from the session"),
         ("htop", "kill a process", "terminate a process"), ("bash", "clear the screen", "wipe the terminal screen"),
         ("zsh", "reload the config", "re-read the config file"), ("Docker", "list running containers", "show the running containers"),
         ("kubectl", "list all pods", "show every pod"), ("npm", "update a package", "upgrade a package"),
         ("pip", "upgrade a package", "update a package"), ("ssh", "generate a key pair", "create a key pair")]
GIT = [("delete a local branch", "remove a local branch"), ("undo the last commit", "revert my most recent commit"),
       ("rename a branch", "change the name of a branch"), ("see the commit history", "view the log of commits"),
       ("discard local changes", "throw away my uncommitted changes"), ("stash my changes", "temporarily shelve my changes"),
       ("squash commits", "combine several commits into one"), ("list remote branches", "show the remote branches"),
       ("change the last commit message", "edit the message of my latest commit"), ("clone a repository", "copy a repo to my machine")]
LANGS = [(x,) for x in ["Python", "JavaScript", "Java", "Go", "Rust", "Ruby", "C#", "PHP", "Kotlin", "Swift"]]
CODE_TASKS = [("reverse a list", "invert the order of a list"), ("sort a dictionary by value", "order a dict by its values"),
              ("read a file line by line", "iterate over the lines of a file"), ("convert a string to an integer", "parse an int from a string"),
              ("remove duplicates from a list", "deduplicate a list"), ("split a string by commas", "break a string apart on commas"),
              ("merge two dictionaries", "combine two dicts"), ("get the current date", "find today's date"),
              ("check if a file exists", "test whether a file is present"), ("generate a random number", "produce a random number")]
CONCEPTS = [(c,) for c in ["photosynthesis", "inflation", "recursion", "entropy", "machine learning", "a blockchain",
                           "compound interest", "a black hole", "osmosis", "quantum entanglement", "a hash table",
                           "supply and demand", "natural selection", "a mortgage", "the placebo effect", "plate tectonics"]]
PROCESSES = [(p,) for p in ["a vaccine", "GPS", "a refrigerator", "the stock market", "DNS", "a jet engine",
                            "a heat pump", "a microwave oven", "wifi", "public key encryption", "an electric car battery",
                            "the immune system", "a nuclear reactor", "a bicycle gear"]]
PEOPLE = [(p,) for p in ["Albert Einstein", "Marie Curie", "Frida Kahlo", "Nelson Mandela", "Ada Lovelace", "Isaac Newton",
                         "Mahatma Gandhi", "Charles Darwin", "Nikola Tesla", "Amelia Earhart", "Leonardo da Vinci",
                         "Wolfgang Amadeus Mozart", "Serena Williams", "Alan Turing"]]
WORDS = [(w,) for w in ["serendipity", "ubiquitous", "ephemeral", "pragmatic", "nostalgia", "ambivalent", "resilient",
                        "meticulous", "candid", "benevolent", "obsolete", "tenacious", "frugal", "eloquent"]]
ACTIVITIES = [(a,) for a in ["yoga", "meditation", "swimming", "cycling", "green tea", "intermittent fasting", "journaling",
                             "strength training", "walking every day", "cold showers", "learning a second language"]]
DISEASES = [(d,) for d in ["the flu", "diabetes", "anemia", "a migraine", "dehydration", "strep throat", "Lyme disease",
                           "a concussion", "asthma", "food poisoning", "burnout", "COVID"]]
PHENOMENA = [("earthquakes", "an earthquake"), ("rainbows", "a rainbow"), ("hiccups", "hiccups"), ("tides", "the tides"),
             ("thunder", "thunder"), ("the seasons", "the seasons"), ("auroras", "the northern lights"),
             ("tsunamis", "a tsunami"), ("volcanic eruptions", "a volcano to erupt"), ("droughts", "a drought")]
LANDMARKS = [(x,) for x in ["the Eiffel Tower", "Mount Everest", "the Burj Khalifa", "the Statue of Liberty", "Big Ben",
                            "the Empire State Building", "Mount Kilimanjaro", "the Leaning Tower of Pisa", "the CN Tower",
                            "Table Mountain", "the Space Needle", "Mount Fuji"]]
INVENTIONS = [(x,) for x in ["the telephone", "the light bulb", "the printing press", "the World Wide Web", "the airplane",
                             "the steam engine", "the radio", "the bicycle", "the television", "the transistor",
                             "the microwave oven", "the ballpoint pen"]]
DIFFS = [("TCP", "UDP"), ("weather", "climate"), ("a virus", "a bacterium"), ("RAM", "ROM"), ("stocks", "bonds"),
         ("a crocodile", "an alligator"), ("baking soda", "baking powder"), ("a latte", "a cappuccino"),
         ("HTTP", "HTTPS"), ("a psychologist", "a psychiatrist"), ("frogs", "toads"), ("Java", "JavaScript")]
SKILLS = [(s,) for s in ["public speaking", "handwriting", "memory", "posture", "sleep", "focus", "typing speed",
                         "chess game", "cooking skills", "writing style", "running endurance", "photography"]]
IDIOMS = [(i,) for i in ["break a leg", "spill the beans", "once in a blue moon", "bite the bullet", "hit the sack",
                         "under the weather", "cost an arm and a leg", "the ball is in your court", "cut corners",
                         "let the cat out of the bag"]]
GROUPS = [(g,) for g in ["the planets in the solar system", "the noble gases", "the primary colors", "the Great Lakes",
                         "the continents", "the members of the Beatles", "the Seven Wonders of the World",
                         "the Nordic countries", "the bones in the human arm", "the official languages of Switzerland"]]
EVENTS = [(e,) for e in ["the French Revolution", "the Moon landing", "the fall of the Berlin Wall", "the Chernobyl disaster",
                         "the sinking of the Titanic", "the first Olympic Games", "the signing of the Magna Carta",
                         "the Great Fire of London", "the eruption of Vesuvius", "the Boston Tea Party"]]
BEST_FOR = [("laptop", "programming"), ("programming language", "beginners"), ("camera", "vlogging"),
            ("running shoe", "flat feet"), ("houseplant", "a dark room"), ("dog breed", "apartments"),
            ("database", "time series data"), ("note-taking app", "students"), ("bike", "commuting"),
            ("mattress", "back pain")]
STATUS = [(c,) for c in ["404", "500", "403", "502", "301", "429", "503", "401", "418", "304"]]
ANIMALS = [("birds", "bird", "fly", "flies"), ("cats", "cat", "purr", "purrs"), ("mammals", "mammal", "give birth to live young", "gives birth to live young"),
           ("fish", "fish", "sleep", "sleeps"), ("snakes", "snake", "lay eggs", "lays eggs"), ("dogs", "dog", "see in color", "sees in color"),
           ("spiders", "spider", "spin webs", "spins webs"), ("bees", "bee", "die after stinging", "dies after stinging"),
           ("sharks", "shark", "have bones", "has bones"), ("penguins", "penguin", "live in Antarctica", "lives in Antarctica"),
           ("frogs", "frog", "have teeth", "has teeth"), ("turtles", "turtle", "live in water", "lives in water")]
ACTS = [("take ibuprofen with coffee",), ("drink water during a fast",), ("exercise with a cold",), ("eat eggs every day",),
        ("run right after eating",), ("freeze cooked rice",), ("charge my phone overnight",), ("reuse a plastic water bottle",),
        ("give my dog peanut butter",), ("put a cast iron pan in the dishwasher",), ("swim after a tattoo",),
        ("microwave food in plastic containers",)]
COMPARE = [("coffee", "tea", "healthier", "less healthy", "more healthy"), ("Python", "Java", "faster", "slower", "quicker"),
           ("cats", "dogs", "smarter", "dumber", "more intelligent"), ("SSDs", "hard drives", "more reliable", "less reliable", "more dependable"),
           ("Mars", "Venus", "bigger", "smaller", "larger"), ("renting", "buying a house", "cheaper", "more expensive", "less expensive"),
           ("silver", "gold", "heavier", "lighter", "denser"), ("trains", "planes", "safer", "more dangerous", "more secure"),
           ("walking", "running", "better for your knees", "worse for your knees", "easier on your knees"),
           ("Rust", "C++", "safer", "less safe", "more secure")]
PAIRS_PEOPLE = [("Alice", "Bob"), ("Maria", "Ken"), ("Priya", "Omar"), ("Carol", "Dave"), ("Lena", "Tom"), ("Sam", "Yuki")]
ROLE_VERBS = [("send money to", "sent money to", "transfer money to"), ("owe money to", "owe money to", "have a debt to"),
              ("email", "emailed", "send an email to"), ("beat", "beaten", "defeat"), ("call", "called", "phone"),
              ("hire", "hired", "employ"), ("invite", "invited", "ask to come to the party")]
UNIT_PAIRS = [("ounces", "pound"), ("feet", "mile"), ("cups", "gallon"), ("grams", "kilogram"), ("seconds", "hour"),
              ("inches", "foot"), ("milliliters", "liter"), ("centimeters", "meter"), ("minutes", "day"), ("teaspoons", "tablespoon")]
UNIT_SWAP = {"ounces": "grams", "feet": "yards", "cups": "quarts", "grams": "ounces", "seconds": "minutes", "inches": "centimeters",
             "milliliters": "ounces", "centimeters": "inches", "minutes": "hours", "teaspoons": "milliliters"}
CONVERT = [("5", "kilometers", "miles"), ("100", "Fahrenheit", "Celsius"), ("3", "cups", "milliliters"), ("10", "pounds", "kilograms"),
           ("250", "grams", "ounces"), ("6", "feet", "meters"), ("50", "dollars", "euros"), ("2", "liters", "gallons")]
CALC = [("15", "80"), ("12", "7"), ("25", "40"), ("9", "13"), ("18", "6"), ("33", "3"), ("7", "8"), ("14", "15")]
HOWLONG = [(t,) for t in ["boil an egg", "learn to play guitar", "fly from London to New York", "charge an electric car",
                          "bake a loaf of bread", "get a passport", "walk five kilometers", "digest a meal",
                          "grow tomatoes from seed", "become fluent in Spanish"]]
COSTS = [(c,) for c in ["a Netflix subscription", "a passport renewal", "an iPhone 15", "a Tesla Model 3", "a flight to Bali",
                        "a gym membership", "a Nintendo Switch", "solar panels for a house", "a private pilot license", "a root canal"]]
WHEREIS = [(p,) for p in ["Machu Picchu", "Petra", "Angkor Wat", "Timbuktu", "Lake Titicaca", "Uluru", "Chichen Itza",
                          "the Taj Mahal", "Stonehenge", "the Great Barrier Reef"]]
WHYADJ = [("the sky", "blue"), ("the sea", "salty"), ("grass", "green"), ("ice", "slippery"), ("the Dead Sea", "so salty"),
          ("the Sahara", "so dry"), ("gold", "so valuable"), ("onions", "irritating to the eyes"), ("the moon", "so bright at night"),
          ("Venus", "so hot")]
LISTS = [(x,) for x in ["cheap date ideas", "easy houseplants for beginners", "fun things to do on a rainy day",
                        "healthy breakfast ideas", "good icebreaker questions", "names for a golden retriever",
                        "board games for two players", "ways to save money on groceries"]]
SYN_ITEMS = [("buy", "purchase", "a used car"), ("start", "begin", "a vegetable garden"), ("fix", "repair", "a leaky faucet"),
             ("clean", "wash", "a wool sweater"), ("remove", "get rid of", "a wasp nest"), ("learn", "study", "calculus on my own"),
             ("choose", "pick", "a good watermelon"), ("find", "locate", "my lost phone"), ("stop", "quit", "smoking"),
             ("build", "make", "a birdhouse"), ("lose", "shed", "belly fat"), ("speed up", "accelerate", "a slow laptop")]
TRANSLATE = [("good morning", "Spanish"), ("thank you", "Japanese"), ("where is the station", "German"), ("I love you", "French"),
             ("cheers", "Italian"), ("how much does it cost", "Portuguese"), ("happy birthday", "Korean"), ("excuse me", "Dutch")]
COUNT_PARTS = [("legs", "a spider"), ("bones", "an adult human"), ("keys", "a piano"), ("strings", "a violin"), ("hearts", "an octopus"),
               ("moons", "Mars"), ("teeth", "an adult"), ("players", "a soccer team"), ("squares", "a chessboard"), ("sides", "a hexagon")]
TIME_OF = [("today", "tomorrow"), ("tonight", "this weekend"), ("this morning", "this evening"), ("right now", "next week"),
           ("in July", "in January"), ("this winter", "this summer")]
SHAPES = [" Answer in one sentence.", " Please give a detailed answer.", " Reply in JSON.", " Answer in French.",
          " Give me 3 bullet points.", " Explain it like I'm five.", " Keep it under 50 words.", " Format it as a table.",
          " Step by step, please.", " Include code examples."]
TASKS = ["Write a poem about {t}.", "Write a short story about {t}.", "Summarize the history of {t}.", "Make a quiz about {t}.",
         "Write a tweet about {t}.", "Translate a text about {t} into German.", "Write a haiku about {t}."]


def fam(name: str, values: list[tuple[str, ...]], slots: str, para: list[str], *, topic: str, swaps: dict[str, str] | None = None,
        neg: list[tuple[str, str]] | None = None, pools: dict[str, list[Any]] | None = None,
        links: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A paraphrase family: ``para`` templates over ``slots`` (comma separated, one per value column)."""
    return {"name": name, "values": values, "slots": slots.split(","), "para": para, "topic": topic,
            "swaps": swaps or {}, "neg": neg or [], "pools": pools or {}, "links": links or {}}


FAMILIES = [
    fam("who_wrote", BOOKS, "b", ["Who wrote {b}?", "Who is the author of {b}?", "Who's the writer of {b}?",
                                   "{b} was written by whom?", "Who authored {b}?", "Which author wrote {b}?"],
        topic="{b}", swaps={"b": "entity"}, neg=[("task", "Who translated {b} into English?"),
                                                 ("topic", "Who illustrated {b}?"), ("time", "When was {b} written?")]),
    fam("acronym", ACRONYMS, "a", ["What does {a} stand for?", "What is {a} short for?", "What's the full form of {a}?",
                                    "{a} stands for what?", "What does the abbreviation {a} mean?", "Expand the acronym {a}."],
        topic="{a}", swaps={"a": "entity"}, neg=[("topic", "Who invented {a}?"), ("task", "Write a poem about {a}.")]),
    fam("population", CITIES, "c", ["What's the population of {c}?", "How many people live in {c}?", "How populous is {c}?",
                                     "What is the number of inhabitants of {c}?", "{c} population?", "How many residents does {c} have?"],
        topic="{c}", swaps={"c": "entity"}, neg=[("topic", "What's the area of {c}?"), ("topic", "How many tourists visit {c}?"),
                                                 ("time", "What was the population of {c} in 1900?"),
                                                 ("quantifier", "How many people live in all of {c}'s suburbs?")]),
    fam("recipe", FOODS, "f", ["Give me a recipe for {f}.", "How do I make {f}?", "How can I cook {f} at home?",
                                "What's a good way to make {f}?", "recipe for {f}?", "How are {f} made? I want to cook them."],
        topic="{f}", swaps={"f": "topic"}, neg=[("topic", "How many calories are in {f}?"), ("topic", "Where did {f} originate?"),
                                               ("negation", "How do I make {f} without eggs?"), ("modality", "Should I make {f} at home?")]),
    fam("capital", COUNTRIES, "c", ["What is the capital of {c}?", "Which city is the capital of {c}?", "What's the capital city of {c}?",
                                     "{c}'s capital is which city?", "Name the capital of {c}.", "capital of {c}?"],
        topic="{c}", swaps={"c": "entity"}, neg=[("topic", "What is the currency of {c}?"), ("topic", "What is the largest city in {c}?"),
                                                 ("topic", "What language is spoken in {c}?"), ("time", "What was the capital of {c} in 1800?")]),
    fam("define", CONCEPTS, "x", ["What is {x}?", "Can you explain {x}?", "Define {x}.", "What does {x} mean?",
                                   "Explain {x} to me.", "I'd like to understand {x}. What is it?"],
        topic="{x}", swaps={"x": "topic"}, neg=[("topic", "What is the history of {x}?"), ("task", "Write a poem about {x}."),
                                               ("negation", "What is not {x}?")]),
    fam("how_works", PROCESSES, "p", ["Explain how {p} works.", "How does {p} work?", "How do {p} function?",
                                       "Can you describe how {p} works?", "What's the mechanism behind {p}?", "how does {p} actually work"],
        topic="{p}", swaps={"p": "topic"}, neg=[("topic", "Who invented {p}?"), ("negation", "Why does {p} not work?"),
                                               ("task", "Write a short story about {p}.")]),
    fam("code_howto", [(lang, t, s) for lang, in LANGS[:6] for t, s in CODE_TASKS[:6]], "l,t,s",
        ["How do I {t} in {l}?", "What's the best way to {t} in {l}?", "In {l}, how can I {t}?", "How to {t} in {l}",
         "{l}: how do I {s}?", "What is the {l} code to {s}?"],
        topic="{t} in {l}", swaps={"l": "entity", "t": "topic"}, links={"t": ["t", "s"]},
        neg=[("task", "Write unit tests for a {l} function that does this: {t}."), ("negation", "Why can't I {t} in {l}?"),
             ("modality", "Should I {t} in {l}?")]),
    fam("cli_howto", TOOLS, "tool,a,s", ["How do I {a} in {tool}?", "What's the command to {s} in {tool}?",
                                          "How can I {s} in {tool}?", "{tool}: how to {a}?", "What key do I press to {a} in {tool}?",
                                          "In {tool}, how do you {s}?"],
        topic="{tool}", swaps={"tool": "topic", "a": "topic"}, links={"a": ["a", "s"]}, neg=[("negation", "Why can't I {a} in {tool}?"),
                                                                    ("topic", "How do I install {tool}?")]),
    fam("git_cli", GIT, "a,s", ["How do I {a} in git?", "What's the git command to {s}?", "How can I {s} with git?",
                                 "git: how to {a}?", "What command lets me {a} using git?", "Using git, how do I {s}?"],
        topic="git", swaps={"a": "topic"}, links={"a": ["a", "s"]}, neg=[("negation", "How do I {a} in git without losing work?"),
                                                ("task", "Explain why someone would {a} in git.")]),
    fam("distance", [(a, b) for a, b in [("Paris", "London"), ("Tokyo", "Osaka"), ("New York", "Boston"), ("Earth", "the Moon"),
                                           ("Berlin", "Munich"), ("Sydney", "Melbourne"), ("Madrid", "Lisbon"), ("the Sun", "Mars")]],
        "x,y", ["How far is {x} from {y}?", "What's the distance between {x} and {y}?", "How far apart are {x} and {y}?",
                "What is the distance from {x} to {y}?", "distance {x} to {y}?", "How far is it from {y} to {x}?"],
        topic="{x}", swaps={"x": "entity", "y": "entity"}, neg=[("topic", "How long is the flight from {x} to {y}?"),
                                                               ("unit", "How far is {x} from {y} in miles?")]),
    fam("boiling", [(x,) for x in ["water", "ethanol", "olive oil", "milk", "salt water", "mercury", "acetone", "honey"]], "x",
        ["What is the boiling point of {x}?", "At what temperature does {x} boil?", "When does {x} start boiling?",
         "What temperature is needed to boil {x}?", "{x} boiling point?", "How hot does {x} have to be to boil?"],
        topic="{x}", swaps={"x": "topic"}, neg=[("topic", "What is the freezing point of {x}?"), ("unit", "What is the boiling point of {x} in Fahrenheit?"),
                                               ("comparison", "Does {x} boil at a higher temperature than water at sea level?")]),
    fam("birth", PEOPLE, "p", ["When was {p} born?", "What is {p}'s date of birth?", "What year was {p} born in?",
                                "When is {p}'s birthday?", "{p} birth date?", "In what year was {p} born?"],
        topic="{p}", swaps={"p": "entity"}, neg=[("topic", "When did {p} die?"), ("topic", "Where was {p} born?")]),
    fam("word_meaning", WORDS, "w", ["What does the word '{w}' mean?", "Define '{w}'.", "What's the definition of {w}?",
                                      "What is the meaning of {w}?", "meaning of {w}", "Can you tell me what {w} means?"],
        topic="{w}", swaps={"w": "topic"}, neg=[("topic", "What's the opposite of {w}?"), ("topic", "How do you pronounce {w}?"),
                                               ("task", "Use {w} in a sentence.")]),
    fam("benefits", ACTIVITIES, "x", ["What are the benefits of {x}?", "Why is {x} good for you?", "How does {x} help your health?",
                                       "What are the advantages of {x}?", "Is {x} good for you, and why?", "{x} benefits?"],
        topic="{x}", swaps={"x": "topic"}, neg=[("negation", "What are the risks of {x}?"), ("negation", "Why is {x} bad for you?"),
                                               ("topic", "How do I get started with {x}?")]),
    fam("symptoms", DISEASES, "d", ["What are the symptoms of {d}?", "How do I know if I have {d}?", "What are the signs of {d}?",
                                     "What symptoms does {d} cause?", "{d} symptoms", "How can I tell if I've got {d}?"],
        topic="{d}", swaps={"d": "topic"}, neg=[("topic", "How is {d} treated?"), ("topic", "How do you prevent {d}?"),
                                               ("topic", "Is {d} contagious?")]),
    fam("cause", PHENOMENA, "x,y", ["What causes {x}?", "Why do {x} happen?", "What is the reason for {x}?",
                                     "What makes {y} happen?", "Why does {y} occur?", "{x}: what causes them?"],
        topic="{x}", swaps={"x": "topic"}, links={"x": ["x", "y"]}, neg=[("topic", "How do you predict {x}?"), ("topic", "Where do {x} happen most often?")]),
    fam("howlong", HOWLONG, "t", ["How long does it take to {t}?", "How much time do I need to {t}?", "How long will it take me to {t}?",
                                   "What's the time needed to {t}?", "how long to {t}", "Roughly how long does it take to {t}?"],
        topic="{t}", swaps={"t": "topic"}, neg=[("topic", "How much does it cost to {t}?"), ("modality", "Should I {t}?"),
                                               ("unit", "How many hours does it take to {t}?")]),
    fam("cost", COSTS, "c", ["How much does {c} cost?", "What's the price of {c}?", "How expensive is {c}?",
                              "What does {c} cost?", "price of {c}?", "How much would I pay for {c}?"],
        topic="{c}", swaps={"c": "topic"}, neg=[("topic", "How much does {c} weigh?"), ("comparison", "Is {c} cheaper than it was last year?"),
                                               ("time", "How much did {c} cost in 2015?")]),
    fam("height", LANDMARKS, "x", ["How tall is {x}?", "What is the height of {x}?", "How high is {x}?",
                                    "What's the height of {x}?", "{x} height?", "How many meters tall is {x}?"],
        topic="{x}", swaps={"x": "entity"}, neg=[("unit", "How tall is {x} in feet?"), ("topic", "How old is {x}?"),
                                                 ("topic", "How wide is {x}?")]),
    fam("where_is", WHEREIS, "p", ["Where is {p}?", "In which country is {p}?", "Where is {p} located?",
                                    "Where can I find {p}?", "{p} is located where?", "Which country is {p} in?"],
        topic="{p}", swaps={"p": "entity"}, neg=[("topic", "How old is {p}?"), ("topic", "Who built {p}?"),
                                                 ("time", "When is the best time to visit {p}?")]),
    fam("inventor", INVENTIONS, "i", ["Who invented {i}?", "Who came up with {i}?", "Who was the inventor of {i}?",
                                       "Which person invented {i}?", "{i} was invented by whom?", "Who is credited with inventing {i}?"],
        topic="{i}", swaps={"i": "topic"}, neg=[("time", "When was {i} invented?"), ("topic", "How does {i} work?"),
                                               ("topic", "Who improved {i}?")]),
    fam("difference", DIFFS, "x,y", ["What's the difference between {x} and {y}?", "How does {x} differ from {y}?",
                                      "{x} vs {y}: what's the difference?", "How is {x} different from {y}?",
                                      "What distinguishes {x} from {y}?", "What's the difference between {y} and {x}?"],
        topic="{x}", swaps={"x": "entity", "y": "entity"}, neg=[("topic", "What do {x} and {y} have in common?"),
                                                               ("comparison", "Is {x} better than {y}?")]),
    fam("recommend_book", [(x,) for x in ["World War II", "stoicism", "personal finance", "the Roman Empire", "neuroscience",
                                           "climate change", "startups", "cooking for beginners", "astronomy", "chess"]], "x",
        ["Can you recommend a good book about {x}?", "What's a good book on {x}?", "Suggest a book about {x}.",
         "Which book should I read about {x}?", "good book about {x}?", "What book would you recommend on {x}?"],
        topic="{x}", swaps={"x": "topic"}, neg=[("topic", "Can you recommend a good podcast about {x}?"),
                                               ("number", "Can you recommend three good books about {x}?")]),
    fam("improve", SKILLS, "s", ["How can I improve my {s}?", "Give me tips to improve my {s}.", "What are some ways to improve my {s}?",
                                  "How do I get better at {s}?", "tips for better {s}?", "What should I do to improve my {s}?"],
        topic="{s}", swaps={"s": "topic"}, neg=[("negation", "Why is my {s} getting worse?"), ("task", "Write a poem about my {s}.")]),
    fam("idiom", IDIOMS, "i", ["What does '{i}' mean?", "What's the meaning of the phrase '{i}'?", "What does the idiom '{i}' mean?",
                                "Explain the expression '{i}'.", "meaning of '{i}'?", "When people say '{i}', what do they mean?"],
        topic="'{i}'", swaps={"i": "topic"}, neg=[("topic", "Where does the phrase '{i}' come from?"),
                                                 ("task", "Use '{i}' in a sentence.")]),
    fam("list_members", GROUPS, "g", ["List {g}.", "What are {g}?", "Name {g}.", "Can you list {g} for me?",
                                       "Which are {g}?", "Tell me {g}."],
        topic="{g}", swaps={"g": "topic"}, neg=[("number", "How many are {g}?"), ("quantifier", "Name one of {g}."),
                                               ("shape", "List {g} in alphabetical order.")]),
    fam("when_event", EVENTS, "e", ["When did {e} happen?", "What year did {e} take place?", "When was {e}?",
                                     "In what year did {e} occur?", "{e}: when?", "When exactly did {e} happen?"],
        topic="{e}", swaps={"e": "entity"}, neg=[("topic", "Why did {e} happen?"), ("topic", "Where did {e} happen?"),
                                                 ("topic", "How many people died in {e}?")]),
    fam("best_for", BEST_FOR, "x,p", ["What is the best {x} for {p}?", "Which {x} is best for {p}?", "What's a good {x} for {p}?",
                                       "Recommend a {x} for {p}.", "best {x} for {p}?", "Which {x} would you suggest for {p}?"],
        topic="{x}", swaps={"p": "topic", "x": "topic"}, neg=[("comparison", "What is the worst {x} for {p}?"),
                                                             ("number", "What are the best 5 {x}s for {p}?")]),
    fam("http_status", STATUS, "c", ["What does HTTP error {c} mean?", "What is a {c} status code?", "What does a {c} response mean?",
                                      "HTTP {c} meaning?", "Why do I get a {c} error?", "What does status {c} indicate?"],
        topic="HTTP {c}", swaps={"c": "number"}, neg=[("topic", "How do I avoid a {c} error?"), ("topic", "How do I return a {c} in Flask?")]),
    fam("unit_count", UNIT_PAIRS, "u,v", ["How many {u} are in a {v}?", "How many {u} make up one {v}?", "How many {u} in a {v}?",
                                           "A {v} is how many {u}?", "What's the number of {u} in one {v}?", "{v} to {u}: how many?"],
        topic="{v}", swaps={"u": "unit", "v": "unit"}, pools={"u": list(UNIT_SWAP.values())}),
    fam("convert", CONVERT, "n,u,v", ["Convert {n} {u} to {v}.", "What is {n} {u} in {v}?", "How many {v} is {n} {u}?",
                                       "{n} {u} in {v}?", "Change {n} {u} into {v}.", "How much is {n} {u} in {v}?"],
        topic="{u}", swaps={"n": "number", "u": "unit", "v": "unit"}, neg=[("role", "Convert {n} {v} to {u}.")]),
    fam("calc", CALC, "a,b", ["What is {a} times {b}?", "What's {a} multiplied by {b}?", "Multiply {a} by {b}.",
                               "{a} times {b}?", "What do you get if you multiply {a} and {b}?", "What is the product of {a} and {b}?"],
        topic="{a}", swaps={"a": "number", "b": "number"}, neg=[("task", "What is {a} divided by {b}?"), ("task", "What is {a} plus {b}?")]),
    fam("percent", CALC, "a,b", ["What is {a}% of {b}?", "What's {a} percent of {b}?", "Calculate {a}% of {b}.",
                                  "{a} percent of {b} is what?", "How much is {a}% of {b}?", "Find {a} percent of {b}."],
        topic="{a}", swaps={"a": "number", "b": "number"}, neg=[("role", "What is {b}% of {a}?"), ("task", "What is {a} plus {b}?")]),
    fam("safe_to", ACTS, "a", ["Is it safe to {a}?", "Is it OK to {a}?", "Can I safely {a}?", "Is it fine to {a}?",
                                "Is it all right to {a}?", "safe to {a}?"],
        topic="{a}", swaps={"a": "topic"}, neg=[("modality", "Should I {a}?"), ("negation", "Is it unsafe to {a}?"),
                                               ("modality", "Do I have to {a}?"), ("time", "Is it safe to {a} at night?")]),
    fam("why_adj", WHYADJ, "x,a", ["Why is {x} {a}?", "What makes {x} {a}?", "What causes {x} to be {a}?",
                                    "Why's {x} {a}?", "How come {x} is {a}?", "Explain why {x} is {a}."],
        topic="{x}", swaps={"x": "topic"}, neg=[("negation", "Why is {x} not {a}?"), ("time", "Why was {x} {a} in the past?")]),
    fam("ideas", LISTS, "x", ["Give me some {x}.", "What are some {x}?", "Can you suggest {x}?", "I need {x}. Any suggestions?",
                               "Suggest a few {x}.", "{x}, please."],
        topic="{x}", swaps={"x": "topic"}, neg=[("number", "Give me 10 {x}."), ("quantifier", "What is the single best of all {x}?")]),
    fam("synonym_swap", SYN_ITEMS, "v,w,o", ["How do I {v} {o}?", "How do I {w} {o}?", "What's the best way to {v} {o}?",
                                              "How can I {w} {o}?", "What's the easiest way to {w} {o}?", "Tips to {v} {o}?"],
        topic="{o}", swaps={"o": "topic"}, links={"o": ["o", "v", "w"]}, neg=[("negation", "Why can't I {v} {o}?"), ("modality", "Should I {v} {o}?")]),
    fam("translate_phrase", TRANSLATE, "p,l", ["How do you say '{p}' in {l}?", "What is '{p}' in {l}?", "Translate '{p}' into {l}.",
                                                "How would I say '{p}' in {l}?", "'{p}' in {l}?", "What's the {l} for '{p}'?"],
        topic="'{p}'", swaps={"l": "entity", "p": "topic"}, neg=[("task", "How do you pronounce '{p}' in {l}?")]),
    fam("count_parts", COUNT_PARTS, "p,t", ["How many {p} does {t} have?", "What's the number of {p} on {t}?", "How many {p} has {t} got?",
                                             "{t} has how many {p}?", "Count the {p} of {t}.", "How many {p} are there on {t}?"],
        topic="{t}", swaps={"p": "topic", "t": "topic"}),
    fam("time_in", CITIES[:12], "c", ["What time is it in {c}?", "What's the current time in {c}?", "What's the local time in {c} right now?",
                                       "Current time in {c}?", "Tell me the time in {c}.", "What time is it right now in {c}?"],
        topic="{c}", swaps={"c": "entity"}, neg=[("topic", "What time zone is {c} in?"), ("topic", "What's the weather in {c} right now?")]),
    fam("weather", [(c, t1, t2) for (c,), (t1, t2) in zip(CITIES[4:16], TIME_OF * 2)], "c,t,u",
        ["What's the weather like in {c} {t}?", "How's the weather in {c} {t}?", "What's the forecast for {c} {t}?",
         "Weather in {c} {t}?", "Will it rain in {c} {t}?", "{t}, what's the weather in {c}?"],
        topic="{c}", swaps={"c": "entity"}, neg=[("time", "What's the weather like in {c} {u}?"), ("time", "How was the weather in {c} last year?")]),
    fam("who_is", PEOPLE, "p", ["Who is {p}?", "Tell me about {p}.", "Can you give me some background on {p}?",
                                 "Who was {p}?", "What is {p} known for?", "Give me a short bio of {p}."],
        topic="{p}", swaps={"p": "entity"}, neg=[("topic", "Who was {p} married to?"), ("topic", "How did {p} die?"),
                                                 ("task", "Write a poem about {p}.")]),
    fam("can_animal", ANIMALS, "pl,sg,v,vs", ["Do all {pl} {v}?", "Does every {sg} {vs}?", "Is it true that all {pl} {v}?",
                                               "Can every {sg} {v}?", "Do {pl} always {v}?", "Every {sg} {vs}, right?"],
        topic="{pl}", swaps={"pl": "topic"}, links={"pl": ["pl", "sg", "v", "vs"]}, neg=[("quantifier", "Do some {pl} {v}?"), ("quantifier", "Do most {pl} {v}?"),
                                                  ("quantifier", "Do any {pl} {v}?"), ("negation", "Do all {pl} not {v}?"),
                                                  ("quantifier", "Do no {pl} {v}?")]),
    fam("modal_can", ACTS, "a", ["Can I {a}?", "Am I able to {a}?", "Is it possible to {a}?", "Could I {a}?",
                                  "Is it possible for me to {a}?", "can i {a}"],
        topic="{a}", swaps={"a": "topic"}, neg=[("modality", "Should I {a}?"), ("modality", "Must I {a}?"),
                                               ("modality", "Do I need to {a}?"), ("negation", "Can't I {a}?")]),
    fam("compare", COMPARE, "x,y,c,o,s", ["Is {x} {c} than {y}?", "Is {x} {s} than {y}?", "Are {x} {c} than {y}?",
                                           "Would you say {x} is {c} than {y}?", "{x} vs {y}: is {x} {c}?", "Compared to {y}, is {x} {c}?"],
        topic="{x}", swaps={"x": "entity"}, links={"x": ["x", "y", "c", "o", "s"]}, neg=[("comparison", "Is {y} {c} than {x}?"), ("comparison", "Is {x} {o} than {y}?"),
                                                 ("comparison", "Is {x} as {c} as {y}?")]),
    fam("roles", [(p, q, v1, v2, v3) for (p, q), (v1, v2, v3) in zip(PAIRS_PEOPLE * 2, ROLE_VERBS * 2)], "p,q,v,pp,w",
        ["Did {p} {v} {q}?", "Has {p} {pp} {q}?", "Did {p} {w} {q}?", "Is it true that {p} did {v} {q}?",
         "Was it {p} who did {v} {q}?", "did {p} {v} {q}"],
        topic="{p}", swaps={"p": "entity", "q": "entity"}, links={"p": ["p", "q"], "q": ["p", "q"]}, neg=[("role", "Did {q} {v} {p}?"), ("role", "Has {q} {pp} {p}?"),
                                                               ("negation", "Didn't {p} {v} {q}?"), ("time", "Will {p} {v} {q}?")]),
]

# ---------------------------------------------------------------------------- styles
FILLERS_PRE = ["Quick question: ", "Hey, ", "Hi! ", "I was wondering, ", "Hello, ", "Sorry to bother you, but "]
FILLERS_POST = [" Thanks!", " Thank you.", " Thanks in advance.", " Cheers."]


def _typo(text: str, rng: random.Random) -> str:
    words = text.split()
    idx = [i for i, w in enumerate(words) if w.isalpha() and w.islower() and len(w) >= 5]
    if not idx:
        return text
    i = rng.choice(idx)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def style(text: str, name: str, rng: random.Random) -> str:
    """Rewrite ``text`` in a writing style; the meaning stays."""
    if name == "plain":
        return text
    if name == "casual":
        t = text.lower().rstrip(".?!")
        t = t.replace("what is", "what's").replace("how do i", "how do i").replace("do not", "don't")
        return t
    if name == "polite":
        return rng.choice(FILLERS_PRE) + text[0].lower() + text[1:] + rng.choice(FILLERS_POST)
    if name == "typo":
        return _typo(text, rng)
    if name == "shout":
        return text.rstrip("?.!") + "??"
    raise ValueError(name)


STYLES = ["plain", "plain", "casual", "polite", "typo", "shout"]


def _fill(template: str, slots: list[str], values: tuple[str, ...]) -> str:
    out = template.format(**dict(zip(slots, values)))
    return out[0].upper() + out[1:] if out[0].isalpha() and template[0] == "{" else out


def _row(family: str, edit: str, label: int, st: str, query: str, cached: str) -> dict[str, Any]:
    split = "test" if family in TEST_FAMILIES or edit in TEST_EDITS else "train"
    rid = hashlib.sha256(f"{query}\x00{cached}".encode()).hexdigest()[:10]
    return {"id": rid, "family": family, "edit": edit, "category": "paraphrase" if label else edit, "label": label,
            "style": st, "split": split, "query": query, "cached": cached}


def generate(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()

    def add(row: dict[str, Any]) -> None:
        key = (row["query"].casefold(), row["cached"].casefold())
        if key in seen or row["query"].strip().casefold() == row["cached"].strip().casefold():
            return
        seen.add(key)
        rows.append(row)

    for f in FAMILIES:
        vals, slots, para = f["values"], f["slots"], f["para"]
        for v in vals:
            # Positives: three template pairs per value, each in a style.
            for _ in range(3):
                ta, tb = rng.sample(para, 2)
                st = rng.choice(STYLES)
                a, b = _fill(ta, slots, v), _fill(tb, slots, v)
                add(_row(f["name"], "none", 1, st, style(a, st, rng), style(b, "plain" if st == "typo" else st, rng)))
            ta, tb = rng.sample(para, 2)
            a, b = _fill(ta, slots, v), _fill(tb, slots, v)
            st = rng.choice(STYLES)
            sa = style(a, st, rng)
            # Slot refills: another value of the same column.
            for slot, edit in f["swaps"].items():
                k = slots.index(slot)
                # Slots written together ("exit"/"quit", "birds"/"bird") change together: take them from another row.
                linked = [slots.index(x) for x in f["links"].get(slot, [slot])]
                pool = f["pools"].get(slot)
                rows_other = [w for w in vals if w[k] != v[k] and w[k] not in v]
                if not pool and not rows_other:
                    continue
                v2 = list(v)
                if pool:
                    v2[k] = rng.choice([o for o in pool if o != v[k]])
                else:
                    donor = rng.choice(rows_other)
                    for j in linked:
                        v2[j] = donor[j]
                uses = [t for t in para if any("{" + slots[j] + "}" in t for j in linked)]
                tn = tb if tb in uses else (rng.choice(uses) if uses else tb)
                add(_row(f["name"], edit, 0, st, sa, style(_fill(tn, slots, tuple(v2)), "plain" if st == "typo" else st, rng)))
            # Negative templates of the family.
            for edit, tn in f["neg"]:
                if rng.random() < 0.7:
                    add(_row(f["name"], edit, 0, st, sa, style(_fill(tn, slots, v), "plain" if st == "typo" else st, rng)))
            # Answer shape: a constraint added to one side.
            if rng.random() < 0.45:
                add(_row(f["name"], "shape", 0, st, sa, b + rng.choice(SHAPES)))
            # Task: another operation on the same topic.
            if rng.random() < 0.3:
                topic = _fill(f["topic"], slots, v)
                add(_row(f["name"], "task", 0, st, sa, rng.choice(TASKS).format(t=topic)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(HERE / "semantic_pairs_gen.jsonl"))
    args = parser.parse_args()
    rows = generate(args.seed)
    with open(args.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    from collections import Counter
    print(f"{len(rows)} pairs, {len({r['family'] for r in rows})} families -> {args.out}")
    print("by category:", dict(Counter(r["category"] for r in rows)))
    print("by split:", dict(Counter(r["split"] for r in rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
