# The part of Dataiku's `dataiku` package that API node user code imports, shipped by apinode's
# workers. A real `dataiku` package installed in the code environment takes precedence.
