"""Each rule of the verifier with a pair it must accept and a pair it must refuse, both ways round.

Pairs here are written for these tests (not taken from any benchmark file). A rule that compares
meaning rather than spelling must let a harmless rewording through ("3rd" / "third") and still refuse
the difference it exists to catch ("3rd" / "fourth").
"""

from __future__ import annotations

import re

import pytest

from llmcache.proxy.semantic import rewrite
from llmcache.proxy.semantic.analysis import analyse
from llmcache.proxy.semantic.evidence import edit_of
from llmcache.proxy.semantic.explain import EVIDENCE
from llmcache.proxy.semantic.verify import REASONS, Verifier

# (rule, query, stored): the same question asked in another way.
SAME = [
    ('ordinal', "What's the 3rd largest lake in Africa?", "What's the third largest lake in Africa?"),
    ('one', 'Write one limerick about a sleepy owl.', 'Write a limerick about a sleepy owl.'),
    ('duration', 'Plan a 21-day trip to Vietnam.', 'Plan a three-week trip to Vietnam.'),
    ('half', 'Is an hour and a half enough to see the Louvre?', 'Is 90 minutes enough to see the Louvre?'),
    ('ident', 'How should I fill in a W-4 form?', 'How do I fill in a W-4 form?'),
    ('free', 'Suggest a gluten-free pancake recipe.', 'Suggest a pancake recipe without gluten.'),
    ('rate', 'Is drinking 3 coffees daily too much?', 'Is drinking three coffees a day too much?'),
    ('degree', 'Convert 20 °C to °F.', 'Convert 20 degrees Celsius to Fahrenheit.'),
    ('listall', 'List all the files in a folder with Python.', 'List the files in a folder with Python.'),
    ('lastn', 'Show the last 5 commits in git.', 'Show the previous five commits in git.'),
    ('questionsentence',
     "I'm calling fetch in a loop and the page freezes. Why?",
     "Why does the page freeze when I'm calling fetch in a loop?"),
    ('altq', 'Which is healthier, brown rice or white rice?', 'Is brown rice or white rice healthier?'),
    ('between', "What's the difference between a crocodile and an alligator?",
     "What's the difference between an alligator and a crocodile?"),
    ('slip', 'how do i descirbe my job in an intervew', 'how do i describe my job in an interview'),
    ('afew', 'Suggest a few podcasts about urban history.', 'Suggest podcasts about urban history.'),
    ('howa', 'How do I write a unit test in Go?', 'How do I write unit tests in Go?'),
    ('howlong', 'How long does a broken wrist take to heal?', "What's the healing time for a broken wrist?"),
    ('which', 'Which explorer reached the South Pole first?', 'Who reached the South Pole first?'),
    ('signs', 'What are the signs that bread has gone stale?', 'How can I tell if bread has gone stale?'),
    ('following', "Summarise the following review: 'Slow service, great pasta.'",
     "Summarise this review: 'Slow service, great pasta.'"),
    ('goodway', "What's a good way to learn Spanish?", 'What are good ways to learn Spanish?'),
    ('daily', 'I walk my dog twice a day, is that enough?', 'I walk my dog twice daily, is that enough?'),
    ('dueto', 'Write an email cancelling the picnic because of rain.',
     'Write an email cancelling the picnic due to rain.'),
    ('adverb', 'How do I delete a local git branch?', 'What is the command to delete a branch locally in git?'),
    ('title', 'Summarize the main themes of the novel Middlemarch.',
     'Give me a summary of the main themes in Middlemarch.'),
    ('alarm', 'What should I do if my smoke detector keeps beeping?',
     'My smoke alarm keeps beeping. What should I do?'),
    ('giveme', 'Write a haiku about a rainy Monday.', 'Give me a haiku about a rainy Monday.'),
    ('typically', 'How long does a cold usually last?', 'Typically, how long does a cold last?'),
    ('whshould', 'How long should bread dough rise?', 'How long does bread dough need to rise?'),
    ('often', 'How often should I water a cactus?', 'What is the right watering frequency for a cactus?'),
    ('largest', 'Which country has the largest number of islands?', 'Which country has the most islands?'),
    ('passive', 'I feed my sourdough starter daily. Why is my bread flat?',
     'My sourdough starter gets fed daily. Why is my bread flat?'),
    ('nouncompound', 'How often should I change the oil in my car?',
     'What is the right interval between oil changes for my car?'),
    ('age', "I'm a 38-year-old nurse. Is it too late to study medicine?",
     "I'm 38 and a nurse. Is it too late to study medicine?"),
    ('howmanyunit', 'What is the boiling point of ethanol at sea level in Celsius?',
     'At sea level, ethanol boils at how many degrees Celsius?'),
    ('dropg', 'how do i stop snorin at night', 'how do i stop snoring at night'),
    ('filler', 'why do cats purr tho', 'why do cats purr'),
    ('fewsome', 'Suggest a few podcasts about gardening.', 'Suggest some podcasts about gardening.'),
    ('taskclass', 'Help me draft a resignation letter.', 'How do I write a resignation letter?'),
    ('summarize',
     'Summarize the causes of the French Revolution.',
     'Briefly explain the causes of the French Revolution.'),
    ('pronounshift', 'How do I reset my router?', 'How do you reset your router?'),
    ('weak',
     "What's a polite way to decline a wedding invitation?",
     'How do I courteously turn down a wedding invitation?'),
    ('abbrev', 'How do I set up my dev environment for Rust?', 'How do I set up my development environment for Rust?'),
    ('light', 'Why is my laptop super slow?', 'Why is my laptop slow?'),
    ('implies', "What's the kubectl command to list pods in Kubernetes?", 'How do I list pods in Kubernetes?'),
    ('phrasal', 'How do I get chewing gum out of my jeans?', 'How do I remove chewing gum from my jeans?'),
    ('verbatim', 'What does `git fetch` do?', 'What does git fetch do?'),
    ('typo', 'how do i boil egs', 'how do i boil eggs'),
    ('casual4', 'good snacks 4 my toddler?', 'good snacks for my toddler?'),
    ('letters', 'why is my cat sooo lazy', 'why is my cat so lazy'),
    ('ornot', 'is coffee bad for you or not', 'is coffee bad for you?'),
    ('dollar', 'Is $2,500 enough for a week in Japan?', 'Is 2500 dollars enough for a week in Japan?'),
    ('worlds', "What is the world's longest river?", 'What is the longest river in the world?'),
    ('frame', "What's the money used in Peru called?", 'What currency does Peru use?'),
    ('howmany', 'How many minutes should I steam broccoli?', 'How long should I steam broccoli?'),
    ('infinitive', "What's the way to load a CSV into a dataframe?", 'How do I read a CSV into a dataframe?'),
    ('walk', 'Walk me through how a bill becomes a law.', 'Explain how a bill becomes a law.'),
    ('keep', 'My printer keeps jamming, how do I fix it?', 'My printer jams, how do I fix it?'),
    ('thanks', 'how do u say thx in italian', 'how do you say thank you in italian?'),
    ('wont', "My faucet won't stop dripping. How do I fix it?", 'My faucet keeps dripping. How do I fix it?'),
    ('newto',
     "I'm new to knitting. What should my first project be?",
     'What should my first knitting project be as a beginner?'),
    ('over', 'Find files over 2 GB on my Mac.', 'Find files larger than 2 GB on my Mac.'),
    ('disable', 'How do I disable notifications on my Pixel?', 'How do I turn off notifications on my Pixel?'),
    ('count', 'Chess board square count?', 'How many squares are on a chess board?'),
    ('asker', 'Is there any way to get back a voice memo I deleted?', 'How do I recover a deleted voice memo?'),
    ('possessive', "whats a good gift for my bf's graduation", "whats a good gift for my boyfriend's graduation"),
    ('usa', 'how long does a us visa take to process', 'how long does it take to process a visa for the US?'),
    ('overview', 'Give me an overview of the Cold War.', 'Summarize the Cold War.'),
    ('terseunit', 'Ounces in a cup?', 'How many ounces are in a cup?'),
    ('addressee', 'Can someone explain the `ls -la` command?', 'Can you explain the `ls -la` command?'),
    ('topic', 'Write a sonnet whose theme is the sea at night.', 'Write a sonnet about the sea at night.'),
    ('infavour', 'Give two arguments in favour of school uniforms.', 'Give two arguments for school uniforms.'),
    ('natural', 'Is quartz a naturally occurring crystal?', 'Is quartz a natural crystal?'),
    ('howlonguntil', 'how long till my sourdough starter is ready',
     'how long does a sourdough starter take to be ready?'),
    ('whattime', 'What time do pharmacies usually open on Sundays?', 'When do pharmacies usually open on Sundays?'),
    ('giventext', "Translate the phrase 'good morning' into Spanish.", "Translate 'good morning' into Spanish."),
    ('begin', 'How do I start learning the guitar?', 'How do I learn the guitar?'),
    ('attached', 'How do I change the phone number linked to my bank account?',
     'How do I change the phone number on my bank account?'),
    ('filetype', 'How do I read a YAML file in Go?', 'How do I read YAML in Go?'),
    ('tone', "Rewrite 'send me the report' to sound more professional.",
     "Rewrite 'send me the report' to sound more formal."),
    ('too', 'is 4 hours of gaming a day 2 much for a kid', 'is 4 hours of gaming a day too much for a kid?'),
    ('whatyear', 'In what year did the Suez Canal open?', 'When did the Suez Canal open?'),
    ('worldwar', 'In what year did WWII end?', 'When did World War II end?'),
    ('istheretool', 'Is there a git tool to find the commit that broke the build?',
     'How do I find the commit that broke the build in git?'),
    ('bigo', 'Big-O of merge sort?', 'What is the time complexity of merge sort?'),
    ('quarterhour', 'How do I run a cron job every quarter of an hour?', 'How do I run a cron job every 15 minutes?'),
    ('opening', 'Write the opening paragraph of a wedding speech.', 'Write the first paragraph of a wedding speech.'),
    ('design', 'Design a beginner yoga routine.', 'Create a beginner yoga routine.'),
    ('allgases', 'List all the greenhouse gases.', 'List the greenhouse gases.'),
    ('howtime', 'How much time does a passport renewal take?', 'How long does a passport renewal take?'),
    ('howsame', 'How high is the Burj Khalifa?', 'How tall is the Burj Khalifa?'),
    ('neither', "I don't like either option. What else is there?", 'I like neither option. What else is there?'),
    ('symmetric', 'How far is Lyon from Geneva?', 'distance Lyon to Geneva?'),
    ('alternatives', 'Should I raise prices or cut staff hours?', 'Should I cut staff hours or raise prices?'),
    ('dash', 'What is the difference between TCP and UDP?', 'TCP vs UDP — how do they differ?'),
    ('ampersand', 'Summarise the plot of Antony and Cleopatra.', 'Summarise the plot of Antony & Cleopatra.'),
    ('free', 'How do I clean an oven without chemicals?', 'What is a chemical-free way to clean an oven?'),
    ('less', 'Give me a muffin recipe with no eggs.', 'Give me an eggless muffin recipe.'),
    ('repeat', 'Tea vs coffee: is tea healthier?', 'Is tea healthier than coffee?'),
    ('passive', 'Our company acquired a competitor last year. What happens to their staff?',
     'Our company acquired a competitor last year. What happens to their staff now?'),
    ('country', 'How much should I tip a waiter in the US?', 'How much should I tip a waiter in the United States?'),
    ('commonname', 'how do i word a polite reminder email', 'how should i phrase a polite reminder email'),
    ('curated', 'How do I thank a colleague for covering my shift?',
     'How do I thank a coworker for covering my shift?'),
    ('adverb', 'How can I raise my credit score quickly?', 'What are some fast ways to raise my credit score?'),
    ('boost', 'How do I improve my Wi-Fi signal at home?', 'How do I boost my Wi-Fi signal at home?'),
]

# (reason, query, stored): the rule's own difference, refused for that reason.
DIFFERENT = [
    ('unit', 'Compute the mean trip length in minutes from pickup_time and dropoff_time.',
     'Compute the mean trip length in seconds from pickup_time and dropoff_time.'),
    ('direction', 'how long should i wait to run after eating', 'how long should i wait to eat after running'),
    ('role', 'My sister and I co-own a flat. She wants to sell her half. What rights do I have?',
     'My sister and I co-own a flat. She wants to sell her half. What rights does she have?'),
    ('comparison', 'My two dogs eat the same food. Should I feed the older one less than the puppy?',
     'My two dogs eat the same food. Should I feed the older one the same amount as the puppy?'),
    ('question', 'Write a SQL query that returns the orders that were refunded last month.',
     'Write a SQL query that returns how many orders were refunded last month.'),
    ('shape', 'put my reading list in a markdown table: dune, emma, ulysses',
     'put my reading list as a csv: dune, emma, ulysses'),
    ('role', 'how do i tell my gf her sister is kinda rude', 'how do i tell my sister my gf is kinda rude'),
    ('role', 'Write a short report about a bakery being sued by its former manager.',
     'Write a short report about a bakery suing its former manager.'),
    ('number', "I'm a 38-year-old nurse. Is it too late to study medicine?",
     "I'm 48 and a nurse. Is it too late to study medicine?"),
    ('role', 'Last month I borrowed my cousin\'s van to move house and scraped a parked car. Who should pay?',
     'Last month my cousin borrowed my van to move house and scraped a parked car. Who should pay?'),
    ('role', 'My son, who is nine, is allergic to peanuts, though I have never reacted to them. What snacks are safe?',
     'I am allergic to peanuts, though my son, who is nine, has never reacted to them. What snacks are safe?'),
    ('modality', 'Who should sign the lease?', 'Who can sign the lease?'),
    ('task', 'Write a haiku about a rainy Monday.', 'Explain a haiku about a rainy Monday.'),
    ('comparison', 'Would moving to Denver leave me with more savings than staying in Ohio?',
     'Would moving to Denver leave me with as much savings as staying in Ohio?'),
    ('direction', 'In Hamlet, who does Laertes kill?', 'In Hamlet, who kills Laertes?'),
    ('unit', 'I drink three glasses of soda a day. Is that too much?',
     'I drink three glasses of soda an hour. Is that too much?'),
    ('number', "What's the best note-taking app?", 'What are some good note-taking apps?'),
    ('number', "What's a famous novel by Tolstoy?", "List Tolstoy's famous novels."),
    ('entity', 'What is the population of Kansas?', 'What is the population of Kansas City?'),
    ('content', 'Which explorer reached the South Pole first?', 'When was the South Pole first reached?'),
    ('number', 'Recommend a novel about urban history.', 'Recommend novels about urban history.'),
    ('number', 'Suggest a chatbot for customer support.', 'Suggest chatbots for customer support.'),
    ('quantifier', 'Is it safe to mix bleach and vinegar?', 'Is it safe to mix bleach or vinegar?'),
    ('number', 'is there a decent sushi place near the station', 'list some decent sushi places near the station'),
    ('number', "What's the single best laptop for students?", 'What are some laptops for students?'),
    ('number', "What's the most likely cause of a flat tyre?", 'What are the likely causes of a flat tyre?'),
    ('role', "Does my car insurance pay for my brother's repairs?",
     "Does my brother's car insurance pay for my repairs?"),
    ('role', 'my boss is angry with me for missing the deadline', "i'm angry with my boss for missing the deadline"),
    ('antonym', 'Which laptop is cheaper to repair?', 'Which laptop is more expensive to repair?'),
    ('antonym', 'How do I tighten a loose door hinge?', 'How do I loosen a tight door hinge?'),
    ('comparison', 'Which is safer, cycling or walking?', 'Which is less safe, cycling or walking?'),
    ('quantifier',
     'My team has eight testers. Should I give a bonus to all testers?',
     'My team has eight testers. Should I give a bonus to some testers?'),
    ('quantifier',
     'We emailed 300 customers. None of them clicked the link. Why?',
     'We emailed 300 customers. Some of them did not click the link. Why?'),
    ('modality', 'should you run a dishwasher half full', 'can you run a dishwasher half full'),
    ('question', 'Tell me whether I can reheat cooked pasta.', 'Tell me how to reheat cooked pasta.'),
    ('number', "What's the 3rd largest lake in Africa?", "What's the fourth largest lake in Africa?"),
    ('number', 'Give me one packing tip for Iceland.', 'Give me some packing tips for Iceland.'),
    ('number', 'Plan a 10-day trip to Vietnam.', 'Plan a two-week trip to Vietnam.'),
    ('number', 'Is an hour and a half enough to see the Louvre?', 'Is 60 minutes enough to see the Louvre?'),
    ('symbol', 'How do I fill in a W-4 form?', 'How do I fill in a W-9 form?'),
    ('negation', 'Suggest a gluten-free pancake recipe.', 'Suggest a pancake recipe with gluten.'),
    ('unit', 'Is drinking 3 coffees daily too much?', 'Is drinking three coffees a week too much?'),
    ('direction', 'Convert 20 °C to °F.', 'Convert 20 °F to °C.'),
    ('modality',
     'My landlord says I may paint the walls. Is that normal?',
     'My landlord says I must paint the walls. Is that normal?'),
    ('quantifier', 'List all the files in a folder with Python.', 'List some of the files in a folder with Python.'),
    ('time', 'Show the commits from the last 5 days in git.', 'Show the commits from more than 5 days ago in git.'),
    ('antonym', 'How do I sign in to Slack on my phone?', 'How do I sign out of Slack on my phone?'),
    ('task', 'Help me draft a resignation letter.', 'Proofread my resignation letter.'),
    ('shape',
     'Summarize the causes of the French Revolution.',
     'Explain the causes of the French Revolution in detail.'),
    ('role', 'She never answers my emails. What should I do?', 'I never answer her emails. What should I do?'),
    ('direction', 'git: merge main into my feature branch', 'git: merge my feature branch into main'),
    ('direction', 'Who betrayed Caesar?', 'Whom did Caesar betray?'),
    ('number', 'Name all the primary colors.', 'Name a primary color.'),
    ('content', 'How do I grill salmon?', 'How do I cook salmon?'),
    ('content', 'How do I set up my dev environment for Rust?', 'How do I set up my test environment for Rust?'),
    ('content', 'Why is my laptop so slow?', 'Why is my laptop so loud?'),
    ('content',
     "What's the helm command to list pods in Kubernetes?",
     "What's the kubectl command to list pods in Kubernetes?"),
    ('antonym', 'How do I get wax off the carpet?', 'How do I put wax on the carpet?'),
    ('symbol', 'What does `git fetch` do?', 'What does `git pull` do?'),
    ('content', 'how do i boil egs', 'how do i boil figs'),
    ('number', 'buy 4 tickets for the concert', 'buy 2 tickets for the concert'),
    ('number', 'Is $2,500 enough for a week in Japan?', 'Is $1,500 enough for a week in Japan?'),
    ('content', "What is the world's longest river?", "What is the world's widest river?"),
    ('topic', 'How tall is the Burj Khalifa?', 'How old is the Burj Khalifa?'),
    ('unit', 'How many minutes are in a week?', 'How many hours are in a week?'),
    ('direction',
     'How do I copy a file from my laptop to my phone?',
     'How do I copy a file from my phone to my laptop?'),
    ('number', 'Find files over 2 GB on my Mac.', 'Find files over 5 GB on my Mac.'),
    ('antonym', 'How do I disable notifications on my Pixel?', 'How do I turn on notifications on my Pixel?'),
    ('role', 'how do i tell my teacher my classmate is copying me', 'how do i tell my teacher im copying my classmate'),
    ('shape', 'Give me an overview of the Cold War.', 'Explain the Cold War in detail.'),
    ('unit', 'Ounces in a cup?', 'How many grams are in a cup?'),
    ('content', 'Write a sonnet whose theme is the sea at night.', 'Write a sonnet about the forest at night.'),
    ('antonym', 'Give two arguments in favour of school uniforms.', 'Give two arguments against school uniforms.'),
    ('antonym', 'List 2 reasons for a three-day weekend.', 'List 2 reasons against a 3-day weekend.'),
    ('content', 'Is quartz a naturally occurring crystal?', 'Is quartz a synthetic crystal?'),
    ('content', 'how long till my sourdough starter is ready', 'how long till my sourdough starter dies'),
    ('time', "Translate the phrase 'good morning' into Spanish.", "Translate 'good night' into Spanish."),
    ('content', 'How do I start a podcast?', 'How do I grow a podcast?'),
    ('content', 'How do I change the phone number linked to my bank account?',
     'How do I change the email linked to my bank account?'),
    ('antonym', 'How do I read a YAML file in Go?', 'How do I write a YAML file in Go?'),
    ('content', "Rewrite 'send me the report' to sound more casual.",
     "Rewrite 'send me the report' to sound more formal."),
    ('content', 'is 4 hours of gaming a day 2 much for a kid', 'is 4 hours of gaming a day enough for a kid?'),
    ('question', 'In what year did the Suez Canal open?', 'Where did the Suez Canal open?'),
    ('number', 'In what year did WW1 end?', 'When did World War II end?'),
    ('content', 'Is there a free tool to merge PDFs?', 'Is there a paid tool to merge PDFs?'),
    ('entity', 'What is the Big-O space complexity of merge sort?', 'What is the time complexity of merge sort?'),
    ('number', 'How do I run a cron job every quarter of an hour?', 'How do I run a cron job every 30 minutes?'),
    ('number', 'Write the opening paragraph of a wedding speech.', 'Write the last paragraph of a wedding speech.'),
    ('task', 'Design a beginner yoga routine.', 'Review my beginner yoga routine.'),
    ('number', 'List all the greenhouse gases.', 'Name a greenhouse gas.'),  # "gas" ends in s, yet is singular
    ('topic', 'How much does a kitchen remodel usually cost?', 'How long does a kitchen remodel usually take?'),
    ('topic', 'When was the Golden Gate Bridge finished?', 'How long is the Golden Gate Bridge?'),
    ('role', 'Can my grandparents claim me as a dependent?', 'Can I claim my grandparents as dependents?'),
    ('quantifier', 'What if neither of my landlords replies to the email?',
     'What if either of my landlords does not reply to the email?'),
    ('number', 'Suggest the single best title for my cooking blog.',
     'Suggest a list of possible titles for my cooking blog.'),  # "a list of" asks for several
    ('role', 'Our firm is the acquiring company in this merger. What happens to our HR staff?',
     'Our firm is the acquired company in this merger. What happens to our HR staff?'),
    ('content', 'Is the upgrade completed on all nodes?', 'Is the upgrade on all nodes?'),  # a verb, not "complete"
    ('direction', "Translate 'see you soon' into Italian.", "Translate 'see you soon' from Italian."),
    ('symbol', 'In Python, what does 5 & 3 return?', 'In Python, what does 5 | 3 return?'),
    ('entity', 'Can you give us a discount?', 'Can you give the USA a discount?'),  # "us a" is no "usa"
    ('role', 'Our firm is buying a rival bakery chain next month. What should we tell our bakers?',
     'Our firm is being bought by a rival bakery chain next month. What should we tell our bakers?'),
    ('role', 'I lent my cousin $500 last spring. How do I ask for it back?',
     'My cousin lent me $500 last spring. How do I ask for it back?'),
    ('role', 'I mistakenly sent $40 to a stranger on PayPal.', 'A stranger mistakenly sent me $40 on PayPal.'),
    ('number', 'Recommend a podcast about history.', 'Recommend a few podcasts about history.'),
    ('task', "Correct the spelling in this paragraph: 'Teh cat sat.'",
     "Explain the spelling mistakes in this paragraph: 'Teh cat sat.'"),
    ('content', 'We keep invoices and payroll records in one database. How long must we keep our payroll records?',
     'We keep invoices and payroll records in one database. How long must we keep our records?'),
    ('direction', 'Write a query listing each student together with the teacher they report to, from a students table.',
     'Write a query listing each teacher together with the students who report to them, from a students table.'),
    ('content', "What's the opposite of frugal?", "What does the word 'frugal' mean?"),  # no weak link for a relation
    ('content', "What's a synonym for happy?", "What does the word 'happy' mean?"),
    ('negation', 'Is this shampoo sulfate-free?', 'Does this shampoo contain sulfates?'),
    ('role', 'Our cafe is quiet in winter. Should I cut opening hours or raise wages?',
     'Our cafe is quiet in winter. Should I cut wages or raise opening hours?'),
]

# (kind, query, stored): hard negatives of every kind, written independently of the rules above.
NEGATIVES = [
    ('role', 'Can a tenant sue a landlord for mold?', 'Can a landlord sue a tenant for mold?'),
    ('role',
     'My sister owes me $300 and keeps dodging the topic. How do I ask for it back?',
     'I owe my sister $300 and keep dodging the topic. How do I ask for it back?'),
    ('role',
     "Does the employer pay the employee's travel costs?",
     "Does the employee pay the employer's travel costs?"),
    ('role',
     'My cat keeps chasing my dog around the house, what should I do?',
     'My dog keeps chasing my cat around the house, what should I do?'),
    ('role',
     "I'm 30 and my manager is 25. She keeps ignoring my suggestions. How do I handle it?",
     "I'm 30 and my manager is 25. I keep ignoring her suggestions. How do I handle it?"),
    ('role',
     "Should parents pay for their adult kids' phone bills?",
     "Should adult kids pay for their parents' phone bills?"),
    ('role', 'how do i tell my boss my coworker is bullying me', 'how do i tell my boss im bullying my coworker'),
    ('role',
     "Can a pharmacist refuse to fill a doctor's prescription?",
     "Can a doctor refuse to fill a pharmacist's prescription?"),
    ('quantifier',
     'List all the files in this folder that are older than a week.',
     'List some of the files in this folder that are older than a week.'),
    ('quantifier', 'Do all banks charge overdraft fees?', 'Do most banks charge overdraft fees?'),
    ('quantifier', 'Are any of the Marvel movies on Disney+?', 'Are all of the Marvel movies on Disney+?'),
    ('quantifier', 'Delete all rows where status is null.', 'Delete one row where status is null.'),
    ('quantifier',
     'I volunteer at a food bank. Most of our donors give canned goods. How can we get more fresh produce?',
     'I volunteer at a food bank. Some of our donors give canned goods. How can we get more fresh produce?'),
    ('quantifier', 'does every state require car insurance', 'do some states require car insurance'),
    ('antonym', 'How do I increase the volume on my TV?', 'How do I decrease the volume on my TV?'),
    ('antonym', 'Why is my dough too wet?', 'Why is my dough too dry?'),
    ('antonym', 'how to make my phone charge faster', 'how to make my phone charge slower'),
    ('antonym', 'Our sales went up after we raised prices. Why?', 'Our sales went down after we raised prices. Why?'),
    ('antonym', 'How do I log in to Netflix on my TV?', 'How do I log out of Netflix on my TV?'),
    ('antonym', 'What are the benefits of intermittent fasting?', 'What are the risks of intermittent fasting?'),
    ('antonym',
     'Is it better to stretch before or after running? I usually stretch before.',
     'Is it better to stretch before or after running? I usually stretch after.'),
    ('antonym', 'Which foods raise blood pressure?', 'Which foods lower blood pressure?'),
    ('antonym', 'How do I zoom in on a PDF?', 'How do I zoom out on a PDF?'),
    ('modality',
     'Do I have to file a tax return if I earned under $10k?',
     'Can I file a tax return if I earned under $10k?'),
    ('modality', 'Should I tell my landlord about a leak?', 'Must I tell my landlord about a leak?'),
    ('modality', 'Are dogs allowed in Yosemite?', 'Are dogs required in Yosemite?'),
    ('negation', 'How do I get my toddler to eat vegetables?', 'How do I get my toddler to not eat vegetables?'),
    ('negation', "Which apps don't work offline?", 'Which apps work offline?'),
    ('negation', 'Explain why the experiment failed.', "Explain why the experiment didn't fail."),
    ('number', 'Plan a 3-day itinerary for Rome.', 'Plan a 5-day itinerary for Rome.'),
    ('number',
     "I'm 35 weeks pregnant and have back pain. What helps?",
     "I'm 25 weeks pregnant and have back pain. What helps?"),
    ('number', 'Write a haiku with two stanzas.', 'Write a haiku with three stanzas.'),
    ('time', 'What was the weather like in Paris yesterday?', 'What will the weather be like in Paris tomorrow?'),
    ('time', 'Who won the Super Bowl last year?', 'Who won the Super Bowl this year?'),
    ('time', 'How do I see the commits from last week in git?', 'How do I see the commits from next week in git?'),
    ('unit', 'How many cups are in a liter?', 'How many cups are in a gallon?'),
    ('unit', 'Convert 30 miles per hour to km per hour.', 'Convert 30 miles per hour to meters per second.'),
    ('entity', 'How do I reset my Gmail password?', 'How do I reset my Outlook password?'),
    ('entity', "What's the best way to get from Rome to Florence?", "What's the best way to get from Rome to Venice?"),
    ('entity', 'How do I install numpy with pip?', 'How do I install pandas with pip?'),
    ('entity', 'Give me a recipe for chicken curry.', 'Give me a recipe for lamb curry.'),
    ('scope', "How do I clean my car's interior?", 'How do I clean my whole car?'),
    ('scope', 'Summarize chapter 3 of the report.', 'Summarize the whole report.'),
    ('scope', 'How do I delete one message on WhatsApp?', 'How do I delete a whole chat on WhatsApp?'),
    ('task', 'Translate this email into French.', 'Proofread this email.'),
    ('task', 'Write a cover letter for a nursing job.', 'Review my cover letter for a nursing job.'),
    ('task', 'Explain this SQL query.', 'Optimize this SQL query.'),
    ('shape', 'Explain black holes in one paragraph.', 'Explain black holes in detail.'),
    ('shape', 'List the planets as a table.', 'List the planets as JSON.'),
    ('attribute', 'How tall is the Eiffel Tower?', 'How old is the Eiffel Tower?'),
    ('attribute', "What's the population of Canada?", "What's the area of Canada?"),
    ('attribute', "What's the boiling point of water at sea level?", "What's the density of water at sea level?"),
    ('direction', 'How do I move photos from my Android to my PC?', 'How do I move photos from my PC to my Android?'),
    ('direction', 'Convert 100 USD to EUR.', 'Convert 100 EUR to USD.'),
    ('comparison', 'Is a cheetah faster than a lion?', 'Is a lion faster than a cheetah?'),
    ('comparison', 'Is coffee healthier than tea?', 'Is coffee as healthy as tea?'),
    ('version', 'How do I enable dark mode in Windows 10?', 'How do I enable dark mode in Windows 11?'),
    ('version', "What's new in Python 3.12?", "What's new in Python 3.11?"),
    ('content', 'How do I season a cast iron skillet?', 'How do I clean a cast iron skillet?'),
    ('content', "What's the best way to store cut basil?", "What's the best way to grow basil?"),
    ('content', 'How do I paint a wooden fence?', 'How do I stain a wooden fence?'),
    ('content', 'Tips to stop my puppy from biting?', 'Tips to stop my puppy from barking?'),
    ('content',
     'Can you recommend a good book about the Roman Empire?',
     'Can you recommend a good documentary about the Roman Empire?'),
    ('content', 'How do I freeze fresh spinach?', 'How do I cook fresh spinach?'),
    ('content',
     "My car makes a grinding noise when braking. What's wrong?",
     "My car makes a squealing noise when braking. What's wrong?"),
    ('quantifier',
     'Do both parents need to sign the passport form?',
     'Does either parent need to sign the passport form?'),
    ('quantifier', 'Do many cats get hairballs?', 'Do some cats get hairballs?'),
    ('quantifier', 'Can either of us claim the child tax credit?', 'Can both of us claim the child tax credit?'),
    ('modality', 'Is it legal to record a phone call in Texas?', 'Is it mandatory to record a phone call in Texas?'),
    ('modality', 'Am I obligated to tip at a buffet?', 'Am I allowed to tip at a buffet?'),
    ('modality', 'Is it illegal to drive barefoot in Ohio?', 'Is it legal to drive barefoot in Ohio?'),
    ('modality', 'Do employers have to give a reference?', 'Are employers allowed to give a reference?'),
    ('modality', 'When must I file my taxes?', 'When can I file my taxes?'),
    ('role',
     "Can a landlord keep the tenant's deposit for cleaning?",
     "Can a tenant keep the landlord's deposit for cleaning?"),
    ('role',
     "Should the buyer or the seller pay for the home inspection? I'm the buyer.",
     "Should the buyer or the seller pay for the home inspection? I'm the seller."),
    ('role',
     "What should I do if my neighbor's tree falls on my car?",
     "What should I do if my tree falls on my neighbor's car?"),
    ('role', "How do I tell my mom I don't like her boyfriend?", "How do I tell my mom's boyfriend I don't like her?"),
    ('role',
     'Is it rude if guests bring their own wine to the host?',
     'Is it rude if the host brings their own wine to the guests?'),
    ('role',
     "Does the groom's family pay for the rehearsal dinner?",
     "Does the bride's family pay for the rehearsal dinner?"),
    ('role',
     'My daughter keeps hitting her brother. How do I stop it?',
     'My son keeps hitting his sister. How do I stop it?'),
    ('role', 'Why does my dog bark at my cat?', 'Why does my cat hiss at my dog?'),
    ('antonym', 'Why do my cookies spread too much?', 'Why do my cookies spread too little?'),
    ('antonym',
     'My heart rate is too high after coffee. Is that normal?',
     'My heart rate is too low after coffee. Is that normal?'),
    ('antonym', 'How do I make my resume longer?', 'How do I make my resume shorter?'),
    ('antonym', 'What makes bread dense?', 'What makes bread airy?'),
    ('antonym', 'How can I gain muscle while losing fat?', 'How can I lose muscle while gaining fat?'),
    ('antonym',
     'Is it better to buy a house when rates are rising?',
     'Is it better to buy a house when rates are falling?'),
    ('antonym', 'Why does my car pull to the left when I brake?', 'Why does my car pull to the right when I brake?'),
]


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    return Verifier()


@pytest.mark.parametrize(("rule", "query", "stored"), SAME, ids=[f"{r[0]}-{i}" for i, r in enumerate(SAME)])
def test_a_rewording_the_rule_covers_is_accepted(verifier: Verifier, rule: str, query: str, stored: str) -> None:
    for q, s in ((query, stored), (stored, query)):
        [verdict] = verifier.check_sync(q, [s])
        assert verdict.ok, (rule, verdict)
        assert set(verdict.evidence) <= set(EVIDENCE)


@pytest.mark.parametrize(("reason", "query", "stored"), DIFFERENT,
                         ids=[f"{r[0]}-{i}" for i, r in enumerate(DIFFERENT)])
def test_the_difference_the_rule_exists_for_is_refused(verifier: Verifier, reason: str, query: str,
                                                        stored: str) -> None:
    for q, s in ((query, stored), (stored, query)):
        [verdict] = verifier.check_sync(q, [s])
        assert not verdict.ok and verdict.reason == reason, verdict
        assert verdict.reason in REASONS


@pytest.mark.parametrize(("kind", "query", "stored"), NEGATIVES, ids=[f"{r[0]}-{i}" for i, r in enumerate(NEGATIVES)])
def test_hard_negatives_of_every_kind_are_refused(verifier: Verifier, kind: str, query: str, stored: str) -> None:
    for q, s in ((query, stored), (stored, query)):
        [verdict] = verifier.check_sync(q, [s])
        assert not verdict.ok, (kind, verdict)


def test_surface_rewrites_give_one_spelling() -> None:
    assert rewrite.normalise("a gluten-free cake") == "a without gluten cake"
    assert rewrite.normalise("rent is $1,400/month") == "rent is 1400 $ per month"
    assert rewrite.normalise("how 2 tie a tie") == "how to tie a tie"
    assert rewrite.normalise("i dont know") == "i do not know"
    assert rewrite.normalise("Is $2,500 enough for a week?") == "Is 2500 $ enough for a week?"


def _every_rule(text: str) -> str:
    """:func:`rewrite.normalise` without its short cuts: every rule applied in order, no needle, no twin."""
    t = text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    for pattern, repl, _ in rewrite._RULES:
        t = re.sub(pattern, repl, t)
    return t


@pytest.mark.parametrize("text", [
    "I DONT know if its OK", "Dont Worry, it doesnt matter", "DOESNT the TL;DR say WHY?", "Is it sooo COOL",
    "HOW 2 TIE A TIE", "Drinking 3 COFFEES A DAY, DAILY", "Rent is $1,400/MONTH", "The US vs. the U.S.A. in WW2",
    "A Gluten-Free, Chemical-FREE cake", "Is Wi-Fi on?", "Turned ON the light", "how come it's EATIN grass",
    "Über die Straße: DONT!", "İstanbul or ſtraße, DONT go", "café au lait, dont forget, 2 MUCH sugar",
    "No longer bigger than 100 MB and SMALLER THAN 5", "Walk me through setting up a VPN",
    "Compared to Java, is Go simpler?", "World's biggest desert", "An hour and a half, two and a half",
    "Is there a ſimple way to fix it?",  # (?i) [a-z] matches the long s; lower() keeps it: no twin then
    "Is there a sımple way to fix it?", "Is there a sİmple way to fix it?",  # dotless i, dotted capital I
    "Is there a \u212aind way to say it?",  # the Kelvin sign: (?i) "k", and lower() makes it "k"
    "IS THERE A way TO pay £5 DAILY at 20 °C?", "Café: 3 COFFEES EVERY DAY — too much?",
])
def test_surface_rewrites_do_not_depend_on_their_short_cuts(text: str) -> None:
    """Needles and lower-case twins only skip rules that cannot match: mixed case, accents and non-ASCII included."""
    assert rewrite.normalise(text) == _every_rule(text)


def test_edits_are_measured_on_all_tokens() -> None:
    one = edit_of(analyse("Which foods should I eat with a cold?"), analyse("Which foods should I avoid with a cold?"))
    assert one.places == 1 and one.substitution
    framed = edit_of(analyse("What's a good way to wash a wool coat?"), analyse("How do I clean a wool coat?"))
    assert not framed.substitution  # the question's frame changed too: a rewording


def test_context_quantifiers_and_modals_are_read_apart_from_the_question() -> None:
    a = analyse("Most of my tomatoes split. What should I do?")
    assert a.context_quantifiers == {"most"} and not a.quantifiers
    b = analyse("My landlord says I must repaint. Is that legal?")
    assert "must" in b.context_modals and b.modals == {"can"}


@pytest.mark.parametrize("text", ["İSNT it raining?", "ıSNT it raining?", "AİN'T it raining?", "DOESNT it rain?"])
def test_contraction_look_alikes_are_rewritten_or_left_never_raise(verifier: Verifier, text: str) -> None:
    """A case-insensitive match also takes look-alike capitals ("İ", dotless "ı") whose lower() is no
    lexicon key; the rewrite raised KeyError there and the lookup failed open instead of verifying."""
    rewrite.normalise(text)
    [verdict] = verifier.check_sync(text, ["Is it raining?"])
    assert verdict.reason in REASONS or verdict.ok, verdict


def test_a_slip_of_one_letter_reads_as_the_word_and_names_stay_as_written() -> None:
    """Two letters swapped, one left out or one doubled, in a word no dictionary knows: the one English word it is
    a slip from. Words with no single such neighbour (names, jargon, function words WordNet lacks) are kept."""
    read = [t.text for t in analyse("can u descirbe teh recomended intervew questoins").tokens]
    assert read == ["can", "you", "describe", "the", "recommended", "interview", "questions"]
    # "dict", "noob", "wrok": four letters, too short to tell a slip from a word of its own.
    kept = ["move", "files", "from", "dir", "into", "dict", "kubectl", "ollama", "noob", "wrok"]
    assert [t.text for t in analyse(" ".join(kept)).tokens] == kept


def test_every_with_a_time_is_how_often_not_how_many() -> None:
    assert not analyse("How do I run a backup every 15 minutes?").quantifiers
    assert not analyse("Water it every few days.").quantifiers
    assert analyse("Do all backups run every night?").quantifiers == {"all"}
    assert analyse("Should every employee get a bonus?").quantifiers == {"all"}
