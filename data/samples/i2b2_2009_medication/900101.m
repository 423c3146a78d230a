m="aspirin" 3:1 3:1||do="81 mg" 3:2 3:3||mo="p.o." 3:4 3:4||f="daily" 3:5 3:5||du="nm"||r="nm"||e="nm"||t="nm"||c="nm"||ln="list"
m="metoprolol" 4:1 4:1||do="25 mg" 4:2 4:3||mo="p.o." 4:4 4:4||f="b.i.d." 4:5 4:5||du="nm"||r="hypertension" 5:0 5:0||e="nm"||t="nm"||c="nm"||ln="list"
m="heparin" 6:4 6:4||do="nm"||mo="nm"||f="nm"||du="nm"||r="anticoagulation" 6:6 6:6||e="start"||t="past"||c="factual"||ln="narrative"
