"""Launch the Gradio app (apg/app): python app/app.py [--host 127.0.0.1] [--port 7860] [--share]"""

from apg.app import main

if __name__ == "__main__":
    main()
